"""`pytest --svctrace-report PATH`: in-process tracing and the report, without `svctrace run`."""
from __future__ import annotations

import sys

import pytest

from pytest_svctrace.workers import RECORDS_KEY, send_back
from svctrace.capture import wire
from svctrace.join.collect import Collector
from svctrace.capture.inprocess import BLIND_SPOTS
from svctrace.config import find_pyproject, load_config
from svctrace.events import RunInfo
from svctrace.report.files import write_run_report
from svctrace.views.summary import format_summary, no_test_line

STANDALONE_BLIND_SPOTS = BLIND_SPOTS + (
    "forked children (standalone mode keeps records in memory; use `svctrace run` to see "
    "them)",)


class StandaloneReport:
    """Collects this process's records; on xdist workers ships them to the controller,
    which attributes everything and writes the report."""

    def __init__(self, config: pytest.Config, tracer, path: str, shown: str) -> None:
        self.config = config
        self.tracer = tracer
        self.path = path    # absolute: a test that changes directory does not move it
        self.shown = shown  # as the user wrote it
        self.is_worker = hasattr(config, "workerinput")
        self.worker_lines: list[str] = []
        self.report = None
        self.error: str | None = None
        self.kept: str | None = None  # why an existing report was not replaced
        tracer.notes_in_report = not self.is_worker

    def add_worker_lines(self, lines) -> None:
        self.worker_lines.extend(line if line.endswith("\n") else line + "\n"
                                 for line in lines)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus) -> None:
        if self.is_worker:
            send_back(self.config, RECORDS_KEY, self.tracer.sink.lines())
            return
        try:
            collector = self._build(int(exitstatus))
            self.report = collector.report
            # no test ran: the last report stays
            if not write_run_report(collector.report, self.path):
                self.kept = no_test_line(["pytest"], int(exitstatus), self.shown, False)
        except Exception as exc:  # one line at the end; the tests' own status stands
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            self.error = f"could not write the report to {self.shown}: {reason}"

    def _build(self, exitstatus: int) -> Collector:
        # The nearest pyproject.toml above pytest's rootdir, as `svctrace run` looks
        # above its working directory (config.find_pyproject).
        collector = Collector(load_config(find_pyproject(self.config.rootpath)), "mono")
        self.tracer.sink.flush()
        for record in self.tracer.sink.records:
            collector.add(record)
        decoder = wire.Decoder()
        for record in decoder.feed("".join(self.worker_lines).encode()):
            collector.add(record)
        run = RunInfo("inprocess", tuple(sys.argv), STANDALONE_BLIND_SPOTS, exitstatus,
                      {"mode": "standalone pytest plugin", "notes": self.tracer.notes.lines()})
        collector.finish(run, {"lost_events": 0, "bad_lines": decoder.bad_lines})
        return collector

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.kept:
            terminalreporter.write_line(f"svctrace: {self.kept}")
            return
        if self.error is None and self.report is not None \
                and not self.config.getoption("svctrace_no_summary"):
            terminalreporter.write_sep("-", "svctrace")
            terminalreporter.write_line(format_summary(self.report, self.shown))  # has notes
            return
        for line in ([self.error] if self.error else []) + self.tracer.notes.lines():
            terminalreporter.write_line(f"svctrace: {line}")
