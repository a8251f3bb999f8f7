"""The Tracer: phase, fixture and test-info records of one pytest process, and the outcomes
and fixtures it reads from pytest."""
from __future__ import annotations

import inspect
import os
import time

import pytest

from pytest_svctrace.notes import Notes
from pytest_svctrace.workers import NOTES_KEY, send_back
from pytest_svctrace.pools import PoolWatch
from svctrace.capture import wire
from svctrace.events import (FixtureMarker, FixtureWindows, Marker, PhaseEdge, ProcessEvent,
                             TestInfo)
from svctrace.words import counted



_LINE_TYPES = {b"w": "FixtureWindows", b"t": "TestInfo"}  # the lines built without records


def _windows_of(windows_json: str) -> tuple:
    """PhaseEdge.windows from the JSON the line would have carried (a chunked record)."""
    return tuple(map(tuple, wire.loads_value(f"[{windows_json}]")))


def _new_style_wrappers() -> bool:
    try:
        return "wrapper" in inspect.signature(type(pytest.hookimpl).__call__).parameters
    except (TypeError, ValueError):
        return False


_NEW_STYLE_WRAPPERS = _new_style_wrappers()


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
        self._windows: list[tuple] = []  # function-scoped fixture windows of this phase
        self._windows_when = "setup"
        self._cursor = (0, 0)  # where the next finalizer's teardown began (mono, wall)
        self.pid = os.getpid()
        self._nodeid = ""        # the test running in this process (its last, between tests)
        self._prefix = ""        # its PhaseEdge lines' common start (wire.edge_prefix)
        self._open: str | None = None  # its phase in progress
        self._ending: tuple | None = None  # a reported end waiting for the next start
        # (nodeid, phase) -> the end written before pytest's report came (log=False runners)
        self._guessed: dict[tuple[str, str], tuple[int, int]] = {}
        self._closures: dict[str, frozenset] = {}  # nodeid -> closure(item) at collection
        # describe_collected's caches: fixture definitions -> (ids, JSON), marker names ->
        # JSON, parent node -> its markers' names, class -> its bases as JSON
        self._closure_json: dict[tuple, tuple[frozenset, str]] = {}
        self._markers_json: dict[frozenset, str] = {}
        self._parent_markers: dict = {}
        self._bases_json: dict = {}
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
            self._not_recorded(record, exc)

    def _not_recorded(self, record, exc: Exception) -> None:
        what = _LINE_TYPES.get(record[3:4], "Marker") if type(record) is bytes \
            else type(record).__name__
        self.notes.add("record", f"could not record {what}: {type(exc).__name__}: {exc}")

    def _json(self, text: str) -> str:
        """text as JSON, cached: every node id and fixture id is written several times."""
        found = self._json_of.get(text)
        if found is None:
            found = self._json_of[text] = wire.json_text(text)
        return found

    def outer_edge(self, phase: str, edge: str) -> None:
        """A session or collection edge (a Marker: once a run, not per test)."""
        mono, wall, pid = time.monotonic_ns(), time.time_ns(), os.getpid()
        line = wire.marker_line(mono, wall, pid, self._worker_json, '""', phase, edge)
        self._safe(line if line is not None else
                   Marker(mono, wall, pid, self.worker, "", phase, edge))
        if self._new_epoch is not None:
            self._new_epoch()

    # -- a test's phases -------------------------------------------------------------------
    # One write per phase edge (for the eBPF backend each write is a fold boundary), each one
    # PhaseEdge line. A phase ends at pytest's report of it (outcome, duration, and its
    # function-scoped fixture windows, all read then); that end rides with the next phase's
    # start, written when pytest calls the next phase's hook: what runs between the two
    # (other plugins' report hooks) is the gap between the phases, as evidence names it.
    # The setup starts in pytest_runtest_protocol, before anything of the test runs.
    def begin(self, nodeid: str) -> None:
        """The test starts (its setup): written before any of it runs, so a test that kills
        its process is still named."""
        if self._open is not None or self._ending is not None:
            self.end_open(None)
        self._nodeid = nodeid
        self._prefix = wire.edge_prefix(os.getpid(), self._worker_json, self._json(nodeid))
        self._edge("setup")

    def enter(self, nodeid: str, phase: str) -> None:
        """A phase hook runs: the phase starts, with the end of the one before. A phase
        never reported (a runner that calls runtestprotocol with log=False) ends here; its
        report, if it comes later, still gives its outcome."""
        if self._nodeid != nodeid:
            self.begin(nodeid)
        if self._open == phase:
            return  # the setup, started by the protocol hook
        ending = self._ending
        if ending is not None:
            self._ending = None
            self._edge(phase, *ending)
        elif self._open is not None:
            ended = self._open
            self._guess(nodeid, ended, self._edge(phase, ended, "passed"))
        else:
            self._edge(phase)

    def report(self, report: pytest.TestReport) -> None:
        when, nodeid = report.when, report.nodeid
        if self._open != when or self._nodeid != nodeid:
            # An xdist controller sees its workers' reports; a log=False runner logs a
            # phase after its end was written: its outcome only.
            at = self._guessed.pop((nodeid, when), None)
            if at is not None:
                self._correct(nodeid, when, at, phase_outcome(report), report.duration)
            return
        self._open = None
        windows = ""
        if self._windows:
            if self._windows_when == when:
                windows = self._windows_json()
                self._windows = []
            else:
                self._write_windows()
        if when == "teardown":  # at once: what follows is between tests
            self._edge(None, when, phase_outcome(report), report.duration, windows)
        else:
            self._ending = (when, phase_outcome(report), report.duration, windows,
                            time.monotonic_ns(), time.time_ns())

    def end_open(self, outcome: str | None) -> None:
        """Write a reported end still waiting for the next phase, and end the open phase
        without a report: "interrupted" (Ctrl-C, pytest.exit), or for None "passed" as far
        as anyone can tell (nothing reported it)."""
        ending, self._ending, ended = self._ending, None, self._open
        if ending is not None:
            self._edge(None, *ending)
        if ended is not None:
            at = self._edge(None, ended, outcome or "passed")
            if outcome is None:
                self._guess(self._nodeid, ended, at)

    def _guess(self, nodeid: str, phase: str, at: tuple[int, int]) -> None:
        if len(self._guessed) >= 4096:  # a runner that never logs its reports
            self._guessed.clear()
        self._guessed[(nodeid, phase)] = at

    def _edge(self, started: str | None, ended: str | None = None, outcome: str | None = None,
              duration: float | None = None, windows: str | None = None,
              end_mono: int | None = None, end_wall: int | None = None) -> tuple[int, int]:
        """Write one PhaseEdge: `started` starts now; `ended` ended at end_mono/end_wall
        (its report), or now. windows: the ended phase's, as JSON (None: take them now)."""
        mono, wall = time.monotonic_ns(), time.time_ns()
        if windows is None:
            windows = ""
            if ended is not None and self._windows:
                if self._windows_when == ended:
                    windows = self._windows_json()
                    self._windows = []
                else:
                    self._write_windows()
        if started == "teardown":
            self._cursor = (mono, wall)  # pytest reports only a finalizer's end
        self._open = started
        line = wire.edge_line(self._prefix, mono, wall, started, ended, outcome, duration,
                              windows, end_mono, end_wall)
        if line is None:
            self._safe(PhaseEdge(os.getpid(), self.worker, self._nodeid, mono, wall, started,
                                 ended, outcome, duration, _windows_of(windows), end_mono,
                                 end_wall))
        else:
            try:  # _safe, inlined: four of these a test
                self.sink.line(line)
            except Exception as exc:
                self._not_recorded(line, exc)
        if self._new_epoch is not None:
            self._new_epoch()
        return (mono, wall) if end_mono is None else (end_mono, end_wall)

    def _correct(self, nodeid: str, phase: str, at: tuple[int, int], outcome: str,
                 duration: float) -> None:
        """The outcome of a phase whose end was written before its report (same end)."""
        prefix = wire.edge_prefix(os.getpid(), self._worker_json, self._json(nodeid))
        line = wire.edge_line(prefix, *at, None, phase, outcome, duration)
        self._safe(line if line is not None else PhaseEdge(
            os.getpid(), self.worker, nodeid, *at, None, phase, outcome, duration),
            urgent=False)

    def fixture_window(self, fixturedef, when: str, start: tuple[int, int]) -> None:
        """A function-scoped fixture's setup or teardown ended. They only name the fixture
        in evidence: their windows travel with their phase's end (PhaseEdge.windows)."""
        mono, wall = time.monotonic_ns(), time.time_ns()
        if self._windows and self._windows_when != when:
            self._write_windows()
        self._windows.append((fixture_id(fixturedef), *start, mono, wall))
        self._windows_when = when
        if when == "teardown":
            self._cursor = (mono, wall)  # pytest reports only a finalizer's end

    def wide_fixture(self, fixturedef, when: str, edge: str) -> None:
        """An edge of a wider-scoped fixture: they decide inheritance, so their edges are
        written at once (for the eBPF backend a write is also a fold boundary), after the
        windows before them (the attributor's teardown cursor moves in write order)."""
        mono, wall = time.monotonic_ns(), time.time_ns()
        self._write_windows()
        self._safe(FixtureMarker(mono, wall, os.getpid(), fixture_id(fixturedef),
                                 fixturedef.scope, when, edge))
        if when == "teardown":
            self._cursor = (mono, wall)

    def _windows_json(self) -> str:
        return ",".join(f"[{self._json(fid)},{s_mono},{s_wall},{e_mono},{e_wall}]"
                        for fid, s_mono, s_wall, e_mono, e_wall in self._windows)

    def _write_windows(self) -> None:
        """The function-scoped windows so far on their own line, when something else than
        their phase's end comes first (a wider-scoped fixture's edge)."""
        if self._windows:
            pid, when, windows = os.getpid(), self._windows_when, self._windows
            line = wire.windows_line(pid, when, [self._windows_json()])
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

    def describe_collected(self, item: pytest.Item) -> None:
        """describe() at collection, once per test: the same line, from pieces that tests
        of one module, class or function share (cached by what they are made of)."""
        try:
            info = getattr(item, "_fixtureinfo", None)
            defs = tuple(defs[-1] for defs in info.name2fixturedefs.values() if defs) \
                if info else ()
            fixtures = self._closure_json.get(defs)
            if fixtures is None:
                ids = frozenset(map(fixture_id, defs))
                fixtures = self._closure_json[defs] = (ids, wire.json_text(sorted(ids)))
            self._closures[item.nodeid] = fixtures[0]
            parent = item.parent
            inherited = self._parent_markers.get(parent)
            if inherited is None:  # Node.iter_markers: the item's own, then its parents'
                inherited = self._parent_markers[parent] = frozenset(
                    m.name for m in parent.iter_markers()) if parent is not None \
                    else frozenset()
            own = item.own_markers
            names = inherited.union(m.name for m in own) if own else inherited
            markers = self._markers_json.get(names)
            if markers is None:
                markers = self._markers_json[names] = wire.json_text(sorted(names))
            cls = getattr(item, "cls", None)
            bases = self._bases_json.get(cls)
            if bases is None:
                bases = self._bases_json[cls] = wire.json_text(
                    [c.__name__ for c in cls.__mro__[1:] if c is not object] if cls else [])
            nodeid = item.nodeid
            line = wire.info_line(self._json(nodeid), fixtures[1], markers,
                                  wire.json_text(nodeid.split("::")[0]), bases,
                                  self._worker_json)
        except Exception:  # pytest internals moved: the slow way says what failed
            self.describe(item)
            return
        if line is None:
            self.describe(item)  # too long for one line: the record is chunked
        else:
            self._safe(line, urgent=False)

    # -- hooks ---------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_collection(self, session):
        self.outer_edge("collection", "start")
        yield
        self.outer_edge("collection", "end")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            self.describe_collected(item)
        # Written before xdist hears this worker finished collecting (so before any test
        # runs anywhere): a later TestInfo from the worker that ran a test always wins.
        self._safe_flush()

    # Plain hooks, not wrappers around each phase: pluggy's wrappers cost more than the rest
    # of the plugin's work. Only the process that runs a test calls its protocol hook (not
    # an xdist controller).
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item, nextitem) -> None:
        self.report_pool_workers()
        self.begin(item.nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.report(report)

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self, excinfo) -> None:  # (tryfirst: before others' traffic)
        # Ctrl-C or pytest.exit left the phase without a report: the test never finished.
        self.end_open("interrupted")

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

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item) -> None:
        self.enter(item.nodeid, "setup")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item) -> None:
        self.enter(item.nodeid, "call")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item) -> None:
        self.enter(item.nodeid, "teardown")
        # Setup and call are over: every fixture the test pulled is active now.
        try:
            closed = self._closures.pop(item.nodeid, None)
            pulled = active_fixtures(item) - (closure(item) if closed is None else closed)
        except Exception as exc:  # pytest internals moved: the closure is all we know
            self.notes.add("pulled", f"could not list pulled fixtures: {type(exc).__name__}: "
                                     f"{exc}")
            pulled = frozenset()
        unseen = self._unseen() if self.inprocess else ()
        if pulled or unseen:
            self.describe(item, pulled, unseen)

    def _unseen(self) -> tuple[str, ...]:
        """C clients loaded in this process by now: the in-process answer misses them."""
        try:
            from svctrace.capture.inprocess import loaded_unseen_clients
            return loaded_unseen_clients()
        except Exception as exc:  # never fail the test over it
            self.notes.add("unseen", f"could not list loaded C client libraries: "
                                     f"{type(exc).__name__}: {exc}")
            return ()

    # tryfirst wrappers are outermost: the fixture's whole setup falls inside its window.
    # New-style wrappers where pluggy has them (>= 1.1): they cost pluggy less.
    if _NEW_STYLE_WRAPPERS:
        @pytest.hookimpl(wrapper=True, tryfirst=True)
        def pytest_fixture_setup(self, fixturedef, request):
            if fixturedef.scope != "function":
                self.wide_fixture(fixturedef, "setup", "start")
                try:
                    return (yield)
                finally:
                    self.wide_fixture(fixturedef, "setup", "end")
            start = time.monotonic_ns(), time.time_ns()
            try:
                return (yield)
            finally:
                self.fixture_window(fixturedef, "setup", start)
    else:
        @pytest.hookimpl(hookwrapper=True, tryfirst=True)
        def pytest_fixture_setup(self, fixturedef, request):
            if fixturedef.scope != "function":
                self.wide_fixture(fixturedef, "setup", "start")
                yield
                self.wide_fixture(fixturedef, "setup", "end")
                return
            start = time.monotonic_ns(), time.time_ns()
            yield
            self.fixture_window(fixturedef, "setup", start)

    @pytest.hookimpl(trylast=True)
    def pytest_fixture_post_finalizer(self, fixturedef, request) -> None:
        if fixturedef.scope == "function":
            self.fixture_window(fixturedef, "teardown", self._cursor)
        else:
            self.wide_fixture(fixturedef, "teardown", "end")

    def session_start(self) -> None:
        self.outer_edge("session", "start")

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
        self.end_open(None)
        self.outer_edge("session", "end")
        self._safe_flush()
