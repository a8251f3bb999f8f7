"""Records in, report out: the one finish path of `svctrace run` and `pytest --svctrace-report`.

Like coverage.py's one Coverage object behind `coverage run` and pytest-cov: both callers
feed records (markers, events, process records) and get the same report, with the same
configuration rules and the same notes.
"""
from __future__ import annotations

import gc
from contextlib import contextmanager

from svctrace.join.analysis import interrupted_notes
from svctrace.join.attribution import Attributor
from svctrace.config import Config
from svctrace.events import RunInfo
from svctrace.report.build import build_report

NO_MARKERS = ("no pytest process wrote test markers, so nothing could be attributed to "
              "tests: the command ran no pytest, or its pytest did not load the svctrace "
              "plugin (see any warning above; `-p no:svctrace` does this, and tox or nox "
              "must pass SVCTRACE_*, PYTHONPATH and PYTEST_PLUGINS through)")


@contextmanager
def _no_cyclic_gc(freeze: bool):
    """Building a report allocates a burst of objects that all live on: the cyclic GC's
    full scans there find nothing and cost 50-70 ms on 2,000 tests. Nor after it, where
    `freeze` (a process that ends soon: the runner): they are moved out of the collector's
    reach (gc.freeze) before it runs again, or its first young collection walks all of them
    (~12 µs a test). Not in a user's pytest (standalone), which may run on for long."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if freeze:
                gc.freeze()
            gc.enable()


class Collector:
    """Attributes the records of one run and turns them into its report."""

    def __init__(self, cfg: Config, clock: str, freeze_report: bool = False) -> None:
        self.cfg = cfg
        self.freeze_report = freeze_report  # see _no_cyclic_gc
        self.attributor = Attributor(cfg.service_map(), clock, cfg.ignore_self_loopback)
        # Bound once, not a method calling it: the runner adds every record through it.
        self.add = self.attributor.add
        self.report: dict | None = None

    def note_cmdline(self, pid: int, cmdline: str) -> None:
        self.attributor.note_cmdline(pid, cmdline)

    def flush(self, before_ns: int) -> None:
        """Attribute what is older than `before_ns` now, while the command still runs."""
        self.attributor.flush(before_ns)

    def progress(self) -> tuple[int, int, int]:
        """(tests that ran, events, marker records) so far, for the progress line."""
        counts = self.attributor.counts
        ran = sum(1 for t in self.attributor.tests.values() if t.ran)
        return ran, counts["events"], counts["markers"]

    def markers_seen(self) -> bool:
        return bool(self.attributor.counts["markers"])

    def finish(self, run: RunInfo, stats: dict) -> dict:
        """The report of everything fed so far; run.extra["notes"] gains what the records
        themselves say (no pytest wrote markers)."""
        notes = list(run.extra.get("notes", []))
        if not self.attributor.counts["markers"]:
            notes.append(NO_MARKERS)
        attribution = self.attributor.finish()
        notes += interrupted_notes(attribution.tests, run.exit_code)
        run = RunInfo(run.backend, run.command, run.blind_spots, run.exit_code,
                      {**run.extra, "notes": notes})
        with _no_cyclic_gc(self.freeze_report):
            self.report = build_report(attribution, run, self.cfg, stats)
        return self.report
