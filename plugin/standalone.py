"""`pytest --svctrace-report PATH`: in-process tracing and the report, without `svctrace run`."""
from __future__ import annotations

import os
import sys

import pytest

from svctrace import wire
from svctrace.attribution import Attributor
from svctrace.backends.inprocess import BLIND_SPOTS
from svctrace.config import ConfigError, load_config
from svctrace.events import RunInfo
from svctrace.report import build_report, format_summary, write_report

WORKER_KEY = "svctrace_records"
STANDALONE_BLIND_SPOTS = BLIND_SPOTS + (
    "forked children (standalone mode keeps records in memory; use `svctrace run` to see "
    "them)",)


class StandaloneReport:
    """Collects this process's records; on xdist workers ships them to the controller,
    which attributes everything and writes the report."""

    def __init__(self, config: pytest.Config, tracer, path: str | None) -> None:
        self.config = config
        self.tracer = tracer
        self.path = path or config.getini("svctrace_report") or "svctrace-report.json"
        self.is_worker = hasattr(config, "workerinput")
        self.worker_lines: list[str] = []
        self.report = None
        if config.pluginmanager.hasplugin("xdist") and not self.is_worker:
            config.pluginmanager.register(_XdistController(self), "svctrace-xdist")

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus) -> None:
        if self.is_worker:
            self.config.workeroutput[WORKER_KEY] = self.tracer.sink.lines()
            return
        try:
            cfg = load_config(os.path.join(str(self.config.rootpath), "pyproject.toml")
                              if (self.config.rootpath / "pyproject.toml").is_file() else None)
        except ConfigError as exc:
            self.config.issue_config_time_warning(pytest.PytestWarning(f"svctrace: {exc}"), 2)
            return
        attributor = Attributor(cfg.service_map(), "mono", cfg.ignore_self_loopback)
        self.tracer.sink.flush()
        for record in self.tracer.sink.records:
            attributor.add(record)
        decoder = wire.Decoder()
        for record in decoder.feed("".join(self.worker_lines).encode()):
            attributor.add(record)
        run = RunInfo("inprocess", tuple(sys.argv), STANDALONE_BLIND_SPOTS, int(exitstatus),
                      {"mode": "standalone pytest plugin"})
        self.report = build_report(attributor.finish(), run, cfg,
                                   {"lost_events": 0, "bad_lines": decoder.bad_lines})
        write_report(self.report, self.path)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.report is None or self.config.getoption("svctrace_no_summary"):
            return
        terminalreporter.write_sep("-", "svctrace")
        terminalreporter.write_line(format_summary(self.report, self.path))


class _XdistController:
    """Registered only when xdist is loaded (pytest-cov's pattern)."""

    def __init__(self, owner: StandaloneReport) -> None:
        self.owner = owner

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        output = getattr(node, "workeroutput", {}) or {}
        self.owner.worker_lines.extend(line if line.endswith("\n") else line + "\n"
                                       for line in output.get(WORKER_KEY, []))
