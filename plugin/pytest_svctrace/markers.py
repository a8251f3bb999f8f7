"""The Tracer: phase, fixture and test-info records of one pytest process, and the outcomes
and fixtures it reads from pytest."""
from __future__ import annotations

import os
import time

import pytest

from pytest_svctrace.notes import Notes
from pytest_svctrace.workers import NOTES_KEY, send_back
from pytest_svctrace.pools import PoolWatch
from svctrace.capture import wire
from svctrace.events import FixtureMarker, FixtureWindows, Marker, ProcessEvent, TestInfo
from svctrace.words import counted

_DEFERRED_ENDS = frozenset({"setup", "call"})  # see Tracer.edge


def _worker_id(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return workerinput.get("workerid") if workerinput else None


def fixture_id(fixturedef) -> str:
    return f"{fixturedef.baseid}::{fixturedef.argname}"


def phase_outcome(report: pytest.TestReport) -> str:
    """passed | failed | skipped | xfailed | xpassed: pytest's own reading of one phase
    (a strict XPASS is already "failed" in the report)."""
    if hasattr(report, "wasxfail"):
        if report.skipped:
            return "xfailed"
        if report.passed:
            return "xpassed"
    return report.outcome


def _guess(exc: BaseException | None) -> str:
    if exc is None:
        return "passed"
    if isinstance(exc, pytest.xfail.Exception):
        return "xfailed"
    return "skipped" if isinstance(exc, pytest.skip.Exception) else "failed"


def _reraised(config: pytest.Config, exc: BaseException | None) -> bool:
    """Whether pytest lets exc escape the test protocol unreported (its runner's rule)."""
    if isinstance(exc, pytest.exit.Exception):
        return True
    return isinstance(exc, KeyboardInterrupt) and not config.getoption("usepdb", False)


def closure(item: pytest.Item) -> frozenset:
    """Fixture ids in the item's static closure (the definition that applies to it)."""
    info = getattr(item, "_fixtureinfo", None)
    return frozenset(fixture_id(defs[-1]) for defs in
                     (info.name2fixturedefs.values() if info else ()) if defs)


def active_fixtures(item: pytest.Item) -> frozenset:
    """Fixture ids active for the item now, including those pulled by getfixturevalue."""
    # FixtureRequest._fixture_defs (pytest 7-9; sub-requests share the dict, so a fixture
    # pulled inside another fixture is there too). Private, hence the fallback.
    defs = getattr(getattr(item, "_request", None), "_fixture_defs", None)
    if isinstance(defs, dict):
        return frozenset(fixture_id(d) for d in defs.values())
    return fixtures_by_name(item)


def fixtures_by_name(item: pytest.Item) -> frozenset:
    """The same from the public FixtureRequest.fixturenames and the fixture manager."""
    found = set()
    request = getattr(item, "_request", None)
    for name in (request.fixturenames if request else ()):
        try:
            visible = item.session._fixturemanager.getfixturedefs(name, item)
        except Exception:  # another pytest's signature: the closure is all we know
            visible = None
        if visible:
            found.add(fixture_id(visible[-1]))
    return frozenset(found)


class Tracer:
    """Writes markers (and, for the in-process backend, socket events) to a sink."""

    def __init__(self, config: pytest.Config, sink, inprocess: bool) -> None:
        self.config = config
        self.sink = sink
        self.inprocess = inprocess
        self._new_epoch = None  # in-process --stacks: a phase edge re-arms first contacts
        if inprocess:
            from svctrace.capture.inprocess import new_epoch
            self._new_epoch = new_epoch
        self.worker = _worker_id(config)
        self._worker_json = wire.json_text(self.worker)
        self._json_of: dict[str, str] = {}
        self._fixture_starts: dict[int, tuple[int, int]] = {}  # id(fixturedef) -> start
        self._windows: list[tuple] = []  # function-scoped fixture windows of this phase
        self._windows_when = "setup"
        self._cursor = (0, 0)  # where the next finalizer's teardown began (mono, wall)
        self.pid = os.getpid()
        self._starts: dict[tuple[str, str], int] = {}
        self._ending: dict[tuple[str, str], str] = {}  # phases awaiting pytest's report
        self.notes = Notes()
        self.notes_in_report = False  # the standalone report's summary prints them
        self.pools = PoolWatch()

    def _safe(self, record, urgent: bool = True) -> None:
        """Write a record, or its line already built (wire.marker_line, windows_line)."""
        try:
            if type(record) is bytes:
                self.sink.line(record, urgent)
            else:
                self.sink(record, urgent)
        except Exception as exc:  # degrade, never fail the test (nor warn: -W error)
            what = ("FixtureWindows" if record[3:4] == b"w" else "Marker") \
                if type(record) is bytes else type(record).__name__
            self.notes.add("record", f"could not record {what}: {type(exc).__name__}: {exc}")

    def _json(self, text: str) -> str:
        """text as JSON, cached: every node id and fixture id is written several times."""
        found = self._json_of.get(text)
        if found is None:
            found = self._json_of[text] = wire.json_text(text)
        return found

    def edge(self, nodeid: str, phase: str, edge: str, outcome: str | None = None) -> None:
        mono, wall, pid = time.monotonic_ns(), time.time_ns(), os.getpid()
        duration = None
        if edge == "start":
            self._starts[(nodeid, phase)] = mono
        else:
            started = self._starts.pop((nodeid, phase), None)
            duration = (mono - started) / 1e9 if started is not None else None
        # The end of setup and of call travel with the next phase's start, a moment later
        # (one write, not two; for the eBPF backend that write is the fold boundary). A
        # teardown's end is written at once: traffic after it is between tests.
        deferred = edge == "end" and phase in _DEFERRED_ENDS and outcome != "interrupted"
        if edge == "end":
            self._write_windows()
        elif phase == "teardown":
            self._cursor = (mono, wall)
        line = wire.marker_line(mono, wall, pid, self._worker_json, self._json(nodeid),
                                phase, edge, outcome, duration)
        self._safe(line if line is not None else
                   Marker(mono, wall, pid, self.worker, nodeid, phase, edge, outcome,
                          duration), urgent=not deferred)
        if self._new_epoch is not None:
            self._new_epoch()

    def fixture(self, fixturedef, when: str, edge: str) -> None:
        mono, wall = time.monotonic_ns(), time.time_ns()
        fid, scope = fixture_id(fixturedef), fixturedef.scope
        if scope == "function":
            # They only name the fixture in evidence: their windows travel in one record
            # per phase, written with the phase's end (FixtureWindows).
            if edge == "start":
                self._fixture_starts[id(fixturedef)] = (mono, wall)
                return
            start = self._fixture_starts.pop(id(fixturedef), None) if when == "setup" \
                else self._cursor
            if self._windows and self._windows_when != when:
                self._write_windows()
            self._windows.append((fid, *(start or (mono, wall)), mono, wall))
            self._windows_when = when
        else:
            # Wider-scoped fixtures decide inheritance: their edges are written at once (for
            # the eBPF backend a write is also a fold boundary), after the windows before
            # them (the attributor's teardown cursor moves in write order).
            self._write_windows()
            self._safe(FixtureMarker(mono, wall, os.getpid(), fid, scope, when, edge))
        if when == "teardown":
            self._cursor = (mono, wall)  # pytest reports only a finalizer's end

    def _write_windows(self) -> None:
        if self._windows:
            pid, when, windows = os.getpid(), self._windows_when, self._windows
            line = wire.windows_line(pid, when, [
                f"[{self._json(fid)},{s_mono},{s_wall},{e_mono},{e_wall}]"
                for fid, s_mono, s_wall, e_mono, e_wall in windows])
            self._safe(line if line is not None else
                       FixtureWindows(pid, when, tuple(windows)), urgent=False)
            self._windows = []

    def describe(self, item: pytest.Item, pulled: frozenset = frozenset(),
                 unseen: tuple[str, ...] = ()) -> None:
        """TestInfo: the fixture closure known at collection, plus `pulled`: fixtures the
        test activated at run time (request.getfixturevalue, pytest-django's DB setup),
        and `unseen`: C clients loaded that the in-process backend cannot see."""
        try:
            cls = getattr(item, "cls", None)
            bases = tuple(c.__name__ for c in cls.__mro__[1:] if c is not object) if cls \
                else ()
            info = TestInfo(item.nodeid, tuple(sorted(closure(item) | pulled)),
                            tuple(sorted({m.name for m in item.iter_markers()})),
                            item.nodeid.split("::")[0], bases, self.worker, unseen)
        except Exception as exc:  # pytest internals moved: degrade, never fail the test
            self.notes.add("describe", f"could not describe a test: {type(exc).__name__}: "
                                       f"{exc}")
            return
        self._safe(info, urgent=False)

    # -- hooks ---------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_collection(self, session):
        self.edge("", "collection", "start")
        yield
        self.edge("", "collection", "end")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            self.describe(item)
        # Written before xdist hears this worker finished collecting (so before any test
        # runs anywhere): a later TestInfo from the worker that ran a test always wins.
        self._safe_flush()

    def _phase(self, item: pytest.Item, phase: str):
        self.flush_ends()
        self.edge(item.nodeid, phase, "start")
        outcome = yield
        exc = outcome.excinfo[1] if outcome.excinfo else None
        if _reraised(item.config, exc):
            # pytest re-raises it without a report (Ctrl-C, pytest.exit): end the window
            # now; the test never finished.
            self.edge(item.nodeid, phase, "end", "interrupted")
        else:
            # The outcome is pytest's report, made after this hook: unittest skips and
            # failures, xfail and strict XPASS raise nothing here (or the wrong thing).
            self._ending[(item.nodeid, phase)] = _guess(exc)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Only ends this process left open: an xdist controller sees its workers' reports.
        if self._ending.pop((report.nodeid, report.when), None) is not None:
            self.edge(report.nodeid, report.when, "end", phase_outcome(report))

    def flush_ends(self) -> None:
        """End windows whose report never came (a runner that calls runtestprotocol with
        log=False) with the outcome the hook's exception suggests."""
        while self._ending:
            (nodeid, phase), guess = self._ending.popitem()
            self.edge(nodeid, phase, "end", guess)

    # tryfirst hookwrappers are outermost: every fixture pytest runs in a phase falls
    # inside its window (the known failure: setup-fixture traffic lost without this).
    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item):
        self.report_pool_workers()
        yield from self._phase(item, "setup")

    def report_pool_workers(self) -> None:
        """Pool workers started so far (by an earlier test or at import) run what this and
        later tests submit: say so before the test starts (plugin/pools.py)."""
        try:
            workers = self.pools.new_workers()
        except Exception as exc:  # threading internals moved: the outlived rule applies
            self.notes.add("pools", f"could not list pool workers: {type(exc).__name__}: {exc}")
            return
        if workers:
            mono, wall, pid = time.monotonic_ns(), time.time_ns(), os.getpid()
            for native, name in workers:
                self._safe(ProcessEvent("pool", mono, wall, pid, comm=name, tid=native),
                           urgent=False)

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item):
        yield from self._phase(item, "call")

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item):
        # Setup and call are over: every fixture the test pulled is active now.
        try:
            pulled = active_fixtures(item) - closure(item)
        except Exception as exc:  # pytest internals moved: the closure is all we know
            self.notes.add("pulled", f"could not list pulled fixtures: {type(exc).__name__}: "
                                     f"{exc}")
            pulled = frozenset()
        unseen = self._unseen() if self.inprocess else ()
        if pulled or unseen:
            self.describe(item, pulled, unseen)
        yield from self._phase(item, "teardown")

    def _unseen(self) -> tuple[str, ...]:
        """C clients loaded in this process by now: the in-process answer misses them."""
        try:
            from svctrace.capture.inprocess import loaded_unseen_clients
            return loaded_unseen_clients()
        except Exception as exc:  # never fail the test over it
            self.notes.add("unseen", f"could not list loaded C client libraries: "
                                     f"{type(exc).__name__}: {exc}")
            return ()

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_fixture_setup(self, fixturedef, request):
        self.fixture(fixturedef, "setup", "start")
        yield
        self.fixture(fixturedef, "setup", "end")

    @pytest.hookimpl(trylast=True)
    def pytest_fixture_post_finalizer(self, fixturedef, request) -> None:
        self.fixture(fixturedef, "teardown", "end")

    def session_start(self) -> None:
        self.edge("", "session", "start")

    def _safe_flush(self) -> None:
        try:
            self.sink.flush()
        except Exception:
            pass

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session) -> None:
        # Not in session_end: xdist sends workeroutput before outer hookwrappers resume.
        errors = getattr(self.sink, "errors", 0)
        if errors:
            self.notes.add("pipe", f"{counted(errors, 'write')} to the marker pipe failed (did "
                                   "`svctrace run` stop?)")
        send_back(self.config, NOTES_KEY, self.notes.export())

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.notes_in_report:
            for line in self.notes.lines():
                terminalreporter.write_line(f"svctrace: {line}")

    def session_end(self) -> None:
        self.flush_ends()
        self.edge("", "session", "end")
        self._safe_flush()
