"""Joins backend events to the plugin's phase windows: which test touched which service (pure).

Rules (README "Attribution rules"):
- An event belongs to the owning pytest process: the nearest ancestor-or-self that writes
  markers (main pytest or an xdist worker), so subprocesses and C-library threads count.
- Within that process it belongs to the test phase window (setup/call/teardown) containing
  its timestamp, boundaries included.
- A subprocess forked inside a test's window whose traffic comes after that window ended
  "outlived" its test: reported, not charged to whatever test runs next.
- Anything else (collection, session start/end, gaps, processes outside pytest) is kept as
  unattributed traffic with a reason.
The Attributor is incremental: feed records as they arrive, flush(watermark) attributes the
events older than the watermark and forgets them, so memory stays bounded on long runs.
"""
from __future__ import annotations

import bisect
import collections
import errno
import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from svctrace.events import (TEST_PHASES, Event, FixtureMarker, Marker, ProcessEvent,
                             TestInfo)
from svctrace.services import ServiceMap

_MAX_THREADS = 8


def _start(window: "Window") -> int:
    return window.start


def _insert_sorted(bucket: list, window: "Window") -> None:
    index = len(bucket)
    while index > 0 and bucket[index - 1].start > window.start:
        index -= 1  # markers arrive nearly in order: walk back from the end
    bucket.insert(index, window)


def result_text(kind: str, result: int) -> str:
    if kind not in ("connect", "connect_result"):
        return "ok" if result >= 0 else errno.errorcode.get(-result, str(result))
    if result == 0:
        return "ok"
    if result == -errno.EINPROGRESS:
        return "in progress"
    if result == -errno.ECONNREFUSED:
        return "refused"
    return errno.errorcode.get(-result, str(result)).lower()


@dataclass
class Window:
    start: int
    end: int | None
    nodeid: str
    phase: str
    worker: str | None = None
    outcome: str | None = None

    def contains(self, ts: int) -> bool:
        return self.start <= ts and (self.end is None or ts <= self.end)


@dataclass
class Contact:
    """Aggregated evidence for one service in one place (test phase or unattributed bucket)."""

    connects: int = 0
    sends: int = 0
    failed_connects: int = 0
    background: bool = False
    threads: set = field(default_factory=set)
    destinations: set = field(default_factory=set)
    fixtures: set = field(default_factory=set)   # fixture windows the events fell in
    outside_fixtures: bool = False               # some event fell in no fixture window
    first: dict | None = None
    first_ts: int | None = None

    def add(self, ev: Event, ts: int, evidence: Callable[[], dict], fixture: str | None
            ) -> None:
        """Count ev; evidence() describes it and is only called when ev is the first."""
        if ev.kind == "connect_result":
            # the later failure of a connect already counted (same time and thread)
            if ev.result < 0:
                self.failed_connects += 1
                if self.first and self.first_ts == ts and self.first["kind"] == "connect":
                    self.first["result"] = result_text(ev.kind, ev.result)
            return
        if ev.kind == "connect":
            self.connects += 1
            if ev.result not in (0, -errno.EINPROGRESS):
                self.failed_connects += 1
        else:
            self.sends += ev.count
        if ev.tid != ev.pid:
            self.background = True
        if len(self.threads) < _MAX_THREADS:
            self.threads.add(ev.comm)
        if len(self.destinations) < _MAX_THREADS:
            self.destinations.add(ev.dest.label())
        if fixture:
            self.fixtures.add(fixture)
        else:
            self.outside_fixtures = True
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts, self.first = ts, evidence()

    def merge(self, other: "Contact") -> None:
        self.connects += other.connects
        self.sends += other.sends
        self.failed_connects += other.failed_connects
        self.background |= other.background
        self.threads |= other.threads
        self.destinations |= other.destinations
        self.fixtures |= other.fixtures
        self.outside_fixtures |= other.outside_fixtures
        if other.first_ts is not None and (self.first_ts is None
                                           or other.first_ts < self.first_ts):
            self.first_ts, self.first = other.first_ts, other.first


@dataclass
class TestRecord:
    __test__ = False  # not a pytest test class
    nodeid: str
    worker: str | None = None
    pid: int | None = None
    outcomes: dict = field(default_factory=dict)    # phase -> outcome
    durations: dict = field(default_factory=dict)   # phase -> seconds
    phases: dict = field(default_factory=lambda: {p: {} for p in TEST_PHASES})  # phase->svc->Contact
    info: TestInfo | None = None
    ran: bool = False


@dataclass
class Attribution:
    """Everything attribution learned, ready for the report."""

    tests: dict[str, TestRecord]
    unattributed: dict[tuple[str, str], dict[str, Contact]]
    fixture_services: dict[str, dict[str, Contact]]  # wider-scoped fixture -> service -> evidence
    fixture_scopes: dict[str, str]
    counts: dict[str, int]


class Attributor:
    def __init__(self, service_map: ServiceMap, clock: str = "mono",
                 ignore_self_loopback: bool = True) -> None:
        if clock not in ("mono", "wall"):
            raise ValueError("clock must be 'mono' or 'wall'")
        self.map = service_map
        self.clock = clock
        self.ignore_self_loopback = ignore_self_loopback
        self.tests: dict[str, TestRecord] = {}
        self.windows: dict[int, list[Window]] = {}      # pid -> test phase windows by start
        self.outer: dict[int, list[Window]] = {}        # pid -> session/collection windows
        self.fixture_windows: dict[int, list[tuple]] = {}  # pid -> [(start, end, fid, scope)]
        self._open_fixture: dict[tuple, int] = {}
        self._teardown_cursor: dict[int, int] = {}
        self.fixture_scopes: dict[str, str] = {}
        self.fixture_services: dict[str, dict[str, Contact]] = {}
        self.parents: dict[int, tuple[int, int | None]] = {}  # pid -> (ppid, fork ts)
        self.cmdlines: dict[int, str] = {}
        self.comms: dict[int, str] = {}
        self.listeners: dict[int, set[int]] = {}
        self.pending: collections.deque[Event] = collections.deque()
        self.unattributed: dict[tuple[str, str], dict[str, Contact]] = {}
        self.counts = {"events": 0, "attributed": 0, "unattributed": 0, "noise": 0,
                       "self_loopback": 0, "markers": 0}

    # -- feeding -------------------------------------------------------------------------
    def _ts(self, record) -> int | None:
        return record.mono_ns if self.clock == "mono" else record.wall_ns

    def add(self, record) -> None:
        if isinstance(record, Event):
            self._add_event(record)
        elif isinstance(record, Marker):
            self._add_marker(record)
        elif isinstance(record, FixtureMarker):
            self._add_fixture_marker(record)
        elif isinstance(record, ProcessEvent):
            self._add_process(record)
        elif isinstance(record, TestInfo):
            self._test(record.nodeid).info = record

    def note_cmdline(self, pid: int, cmdline: str) -> None:
        self.cmdlines.setdefault(pid, cmdline)

    def _test(self, nodeid: str) -> TestRecord:
        if nodeid not in self.tests:
            self.tests[nodeid] = TestRecord(nodeid)
        return self.tests[nodeid]

    def _add_event(self, ev: Event) -> None:
        if ev.kind == "listen":
            if ev.dest.port:
                self.listeners.setdefault(ev.pid, set()).add(ev.dest.port)
            return
        self.counts["events"] += 1
        self.pending.append(ev)

    def _add_process(self, pe: ProcessEvent) -> None:
        if pe.kind == "fork" and pe.ppid and pe.pid != pe.ppid:
            self.parents.setdefault(pe.pid, (pe.ppid, self._ts(pe)))
        if pe.cmdline:
            self.cmdlines[pe.pid] = " ".join(pe.cmdline)
        if pe.comm:
            self.comms[pe.pid] = pe.comm

    def _add_marker(self, mk: Marker) -> None:
        self.counts["markers"] += 1
        ts = mk.mono_ns if self.clock == "mono" else mk.wall_ns
        if mk.phase in TEST_PHASES:
            bucket = self.windows.setdefault(mk.pid, [])
            test = self._test(mk.nodeid)
            test.worker, test.pid, test.ran = mk.worker, mk.pid, True
            if mk.edge == "end":
                if mk.outcome:
                    test.outcomes[mk.phase] = mk.outcome
                if mk.duration_s is not None:
                    test.durations[mk.phase] = mk.duration_s
        else:
            bucket = self.outer.setdefault(mk.pid, [])
        if mk.edge == "start":
            window = Window(ts, None, mk.nodeid, mk.phase, mk.worker)
            _insert_sorted(bucket, window)
            if mk.phase == "teardown":
                self._teardown_cursor[mk.pid] = ts
            return
        for window in reversed(bucket):
            if window.end is None and window.nodeid == mk.nodeid and window.phase == mk.phase:
                window.end, window.outcome = ts, mk.outcome
                return
        # An end without a start (the start line was lost): keep a zero-length window.
        _insert_sorted(bucket, Window(ts, ts, mk.nodeid, mk.phase, mk.worker, mk.outcome))

    def _add_fixture_marker(self, fm: FixtureMarker) -> None:
        ts = fm.mono_ns if self.clock == "mono" else fm.wall_ns
        self.fixture_scopes[fm.fixture] = fm.scope
        key = (fm.pid, fm.fixture, fm.when)
        if fm.edge == "start":
            self._open_fixture[key] = ts
            return
        start = self._open_fixture.pop(key, None)
        if start is None and fm.when == "teardown":
            # pytest only reports a fixture's teardown end (pytest_fixture_post_finalizer);
            # finalizers run one after another, so it began where the previous one ended.
            start = self._teardown_cursor.get(fm.pid, ts)
        if fm.when == "teardown":
            self._teardown_cursor[fm.pid] = ts
        bucket = self.fixture_windows.setdefault(fm.pid, [])
        bucket.insert(bisect.bisect_right(bucket, (start,)), (start, ts, fm.fixture, fm.scope))

    # -- attribution ---------------------------------------------------------------------
    def flush(self, watermark: int | None = None) -> None:
        """Attribute pending events stamped before `watermark` (all when None)."""
        if watermark is None:
            ready, self.pending = self.pending, collections.deque()
            for ev in ready:
                self._attribute(ev)
            return
        # Events arrive nearly in time order: stop at the first one not old enough. One
        # that arrived late behind it waits for a later flush, which is harmless.
        pending, attr = self.pending, "mono_ns" if self.clock == "mono" else "wall_ns"
        while pending and (getattr(pending[0], attr) or 0) < watermark:
            self._attribute(pending.popleft())

    def finish(self) -> Attribution:
        self.flush(None)
        return Attribution(self.tests, self.unattributed, self.fixture_services,
                           self.fixture_scopes, dict(self.counts))

    def _owner(self, pid: int) -> tuple[int | None, int]:
        """(nearest marker-writing ancestor-or-self, the child of it on the path: the pid
        whose fork time tells which window started the subprocess)."""
        seen, child = 0, pid
        current: int | None = pid
        while current is not None and seen < 64:
            if current in self.windows or current in self.outer:
                return current, child
            child = current
            parent = self.parents.get(current)
            current = parent[0] if parent else None
            seen += 1
        return None, pid

    def _is_self_traffic(self, ev: Event) -> bool:
        ports = self.listeners.get(ev.pid)
        if not ports:
            return False
        if ev.local_port and ev.local_port in ports:
            return True  # the process answering on its own listener: server side
        if ev.dest.port in ports and ev.dest.family in ("inet", "inet6"):
            try:
                return ipaddress.ip_address(ev.dest.address).is_loopback
            except ValueError:
                return False
        return False

    def _started_in(self, owner: int, child: int) -> Window | None:
        """The test window of `owner` in which the subprocess branch `child` was forked."""
        fork_ts = self.parents.get(child, (0, None))[1]
        if child == owner or fork_ts is None:
            return None
        return self._window(self.windows.get(owner, []), fork_ts)[0]

    def _window(self, bucket: list[Window], ts: int) -> tuple[Window | None, Window | None]:
        """(window containing ts, the last window that started before ts)."""
        index = bisect.bisect_right(bucket, ts, key=_start) - 1
        if index < 0:
            return None, None
        if bucket[index].contains(ts):
            return bucket[index], bucket[index]
        return None, bucket[index]

    def _fixture_at(self, pid: int, ts: int) -> tuple[str | None, str | None]:
        bucket = self.fixture_windows.get(pid, ())
        index = bisect.bisect_right(bucket, (ts, float("inf")))
        # Fixture windows are nearly disjoint (pytest sets up dependencies before the
        # dependant's hook runs); nesting comes only from getfixturevalue(), so a short
        # look back finds the innermost (latest-starting) window that contains ts.
        for start, end, fid, scope in reversed(bucket[max(0, index - 16):index]):
            if start <= ts <= end:
                return fid, scope
        return None, None

    def _attribute(self, ev: Event) -> None:
        service = self.map.classify(ev.dest)
        # A UDP connect sends nothing (glibc's getaddrinfo connects UDP sockets to sort
        # candidate addresses): only its sends are contacts.
        if service is None or (ev.kind == "connect" and ev.dest.transport == "udp"):
            self.counts["noise"] += 1
            return
        if self.ignore_self_loopback and self._is_self_traffic(ev):
            self.counts["self_loopback"] += 1
            return
        ts = self._ts(ev) or 0
        owner, child = self._owner(ev.pid)
        if owner is None:
            self._unattributed("not-under-pytest", "process outside the pytest tree",
                               service, ev, ts)
            return
        window, previous = self._window(self.windows.get(owner, []), ts)
        started = self._started_in(owner, child) if ev.pid != owner else None
        if started is not None and (window is None or started.nodeid != window.nodeid):
            self._unattributed("outlived-test", f"process started in {started.nodeid}",
                               service, ev, ts)
            return
        if window is None:
            self._outside_tests(owner, ts, previous, service, ev)
            return
        fixture, scope = self._fixture_at(owner, ts)
        if fixture and scope and scope != "function":
            # A class/module/session fixture serves every test that requests it, not the
            # test it happens to run in (the last test gets the session teardown): charge it
            # to the fixture; the report lists it as inherited by each dependent test.
            self.fixture_services.setdefault(fixture, {}).setdefault(service, Contact()).add(
                ev, ts, lambda: {**self._evidence(ev, window, ts), "test": window.nodeid},
                fixture)
        else:
            test = self._test(window.nodeid)
            test.phases[window.phase].setdefault(service, Contact()).add(
                ev, ts, lambda: self._evidence(ev, window, ts), fixture)
        self.counts["attributed"] += 1

    def _outside_tests(self, owner: int, ts: int, previous: Window | None, service: str,
                       ev: Event) -> None:
        outer, _ = self._window(self.outer.get(owner, []), ts)
        if outer is not None and outer.phase == "collection":
            reason, detail = "collection", "while pytest collected tests"
        elif previous is not None:
            reason = "between-tests" if outer is not None else "outside-session"
            detail = f"after {previous.nodeid} ({previous.phase})"
        elif outer is not None:
            reason, detail = "session", "session start, before the first test"
        else:
            reason, detail = "outside-session", "before pytest's session started"
        self._unattributed(reason, detail, service, ev, ts)

    def _unattributed(self, reason: str, detail: str, service: str, ev: Event, ts: int
                      ) -> None:
        bucket = self.unattributed.setdefault((reason, detail), {})
        bucket.setdefault(service, Contact()).add(ev, ts, lambda: self._evidence(ev, None, ts),
                                                  None)
        self.counts["unattributed"] += 1

    def _evidence(self, ev: Event, window: Window | None, ts: int) -> dict:
        return {
            "phase": window.phase if window else None,
            "offset_ms": round((ts - window.start) / 1e6, 3) if window else None,
            "pid": ev.pid,
            "tid": ev.tid,
            "thread": ev.comm,
            "background": ev.tid != ev.pid,
            "cmdline": self.cmdlines.get(ev.pid) or self.comms.get(ev.pid, ""),
            "destination": ev.dest.label(),
            "kind": ev.kind,
            "result": result_text(ev.kind, ev.result),
        }
