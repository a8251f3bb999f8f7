"""Joins backend events to the plugin's phase windows: which test touched which service (pure).

Rules (README "Attribution rules"):
- An event belongs to the owning pytest process: the nearest ancestor-or-self that writes
  markers (main pytest or an xdist worker), so subprocesses and C-library threads count.
- Within that process it belongs to the test phase window (setup/call/teardown) containing
  its timestamp, boundaries included.
- A test owns its whole protocol: traffic between the end of one of its phases and the
  start of the next belongs to the phase before the gap, and the evidence names the gap.
- A subprocess forked, or a thread born, inside a test (threads: not inside a wider-scoped
  fixture) whose traffic comes after that test ended "outlived" its test: reported, not
  charged to whatever test runs next. Except pool workers (the plugin's "pool" records:
  concurrent.futures, asyncio's default executor, multiprocessing's ThreadPool): they run
  what the running test submits, so their traffic is that test's.
- What is a contact, a failed probe or noise is services.ServiceMap.judge's one rule.
- Anything else (collection, session start/end, between tests, processes outside pytest)
  is kept as unattributed traffic with a reason.
- Records the backend lost (events.Lost: the eBPF ring buffer was full) are charged to
  every test phase window of the owning pytest process that overlaps the loss (gaps
  included): any of them may miss a contact, so each such test is incomplete. A loss
  outside every test is counted for the run.
The Attributor is incremental: feed records as they arrive, flush(watermark) attributes the
events older than the watermark and forgets them, so memory stays bounded on long runs.
"""
from __future__ import annotations

import bisect
import collections
import errno
import ipaddress
import operator
from dataclasses import dataclass, field, replace

from svctrace.events import (TEST_PHASES, Event, FixtureMarker, FixtureWindows, Lookup,
                             Lost, Marker, PhaseEdge, ProcessEvent, Stack, TestInfo)
from svctrace.join.evidence import MAX_KEPT, MORE_DESTINATIONS, Contact, result_text
from svctrace.join.lineage import Lineage
from svctrace.join.names import NameTable
from svctrace.join.protocols import AMBIGUOUS
from svctrace.join.services import DENIED, NOISE, PROBE, ServiceMap, canonical
from svctrace.join.stacks import StackIndex

SETUP_HOLD_MAX_NS = 600 * 10**9


_start = operator.attrgetter("start")  # bisect's key: a C call, not a Python frame
_INF = float("inf")


def _insert_sorted(bucket: list, window: "Window") -> None:
    index = len(bucket)
    while index > 0 and bucket[index - 1].start > window.start:
        index -= 1  # markers arrive nearly in order: walk back from the end
    bucket.insert(index, window)


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
class TestRecord:
    __test__ = False  # not a pytest test class
    nodeid: str
    worker: str | None = None
    pid: int | None = None
    outcomes: dict = field(default_factory=dict)    # phase -> outcome
    durations: dict = field(default_factory=dict)   # phase -> seconds
    phases: dict = field(default_factory=lambda: {p: {} for p in TEST_PHASES})  # phase->svc->Contact
    probes: dict = field(default_factory=lambda: {p: {} for p in TEST_PHASES})  # failed probes
    denied: dict = field(default_factory=lambda: {p: {} for p in TEST_PHASES})  # guard refusals
    info: TestInfo | None = None
    ran: bool = False
    # Traffic in this test's windows that the rules set aside: {"self_loopback" | "noise":
    # {destination: count}}, so `explain` can say why an expected call is missing.
    ignored: dict = field(default_factory=dict)
    # records the backend lost while one of its windows ran: its answer may miss services
    lost: int = 0


@dataclass
class Attribution:
    """Everything attribution learned, ready for the report."""

    tests: dict[str, TestRecord]
    unattributed: dict[tuple[str, str], dict[str, Contact]]
    fixture_services: dict[str, dict[str, Contact]]  # wider-scoped fixture -> service -> evidence
    fixture_scopes: dict[str, str]
    counts: dict[str, int]
    unattributed_probes: dict[tuple[str, str], dict[str, Contact]] = field(default_factory=dict)
    # wider-scoped fixture -> {test whose window its traffic fell in: {phases}}: a session
    # fixture set up in one test and torn down in another is found from either (explain)
    fixture_tests: dict[str, dict[str, set]] = field(default_factory=dict)
    names: NameTable = field(default_factory=NameTable)  # host names the tree resolved
    # destination label -> what its traffic said: protocol, hosts, the suite's own listener
    destinations: dict[str, dict] = field(default_factory=dict)


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
        self._open_setups: dict[tuple[int, str], int] = {}  # (pid, nodeid) -> start
        self.fixture_scopes: dict[str, str] = {}
        self.fixture_services: dict[str, dict[str, Contact]] = {}
        self.fixture_tests: dict[str, dict[str, set]] = {}
        self.lineage = Lineage()
        self._thread_origins: dict[tuple[int, int], tuple] = {}  # (tid, birth) -> _origin()
        self._pool_workers: dict[tuple[int, int], int] = {}  # (pid, tid) -> marked at
        self.cmdlines: dict[int, str] = {}
        self.comms: dict[int, str] = {}
        self.listeners: dict[int, set[int]] = {}
        self.pending: collections.deque[Event] = collections.deque()
        self.lost_pending: list[Lost] = []
        self.unattributed: dict[tuple[str, str], dict[str, Contact]] = {}
        self.unattributed_probes: dict[tuple[str, str], dict[str, Contact]] = {}
        self.stacks = StackIndex()  # --stacks: Python call sites
        self.names = NameTable()
        self.counts = {"events": 0, "attributed": 0, "unattributed": 0, "noise": 0,
                       "self_loopback": 0, "failed_probes": 0, "markers": 0}
        self._adders = {Event: self._add_event, Marker: self._add_marker,
                        FixtureMarker: self._add_fixture_marker,
                        FixtureWindows: self._add_fixture_windows,
                        PhaseEdge: self._add_phase_edge,
                        ProcessEvent: self._add_process, TestInfo: self._add_info,
                        Stack: self.stacks.add, Lookup: self._add_lookup,
                        Lost: self._add_lost}

    # -- feeding -------------------------------------------------------------------------
    def _ts(self, record) -> int | None:
        return record.mono_ns if self.clock == "mono" else record.wall_ns

    def add(self, record) -> None:
        # by exact type: the runner feeds ~10 records per test (the record types are final)
        adder = self._adders.get(type(record))
        if adder is not None:
            adder(record)

    def _add_info(self, info: TestInfo) -> None:
        self._test(info.nodeid).info = info

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
                self.map.wire.listen(ev.dest, ev.pid)
            return
        if ev.kind == "connect_result" and self._settle(ev):
            return
        self.counts["events"] += 1
        if ev.first_bytes:
            # Learned on arrival, before the connects to the same destination (which
            # wait WATERMARK_NS in `pending`) are named; the bytes are not kept.
            if not (ev.local_port and ev.local_port in self.listeners.get(ev.pid, ())):
                # (not a server's reply); count: connections that sent these bytes first
                self.map.wire.learn(ev.dest, ev.first_bytes, ev.count)
            ev = replace(ev, first_bytes=None)
        self.pending.append(ev)

    def _add_lost(self, lost: Lost) -> None:
        # charged at flush(), once the markers of its windows have had time to arrive
        self.lost_pending.append(lost)

    def _add_lookup(self, lookup: Lookup) -> None:
        # Not queued: a lookup precedes the contacts it names, which wait in `pending`.
        ts = self._ts(lookup) or 0
        self.names.add(lookup, ts, self._owner(lookup.pid, ts)[0])

    def _settle(self, late: Event) -> bool:
        """A non-blocking connect's later failure, while the connect still waits in
        `pending`: the connect takes its result, so it is judged as the refusal it was (a
        refused connect that nothing names is a failed probe, not a contact and a probe)."""
        ts, pending = self._ts(late), self.pending
        for back in range(1, min(len(pending), 512) + 1):
            ev = pending[-back]
            if ev.kind == "connect" and ev.tid == late.tid and self._ts(ev) == ts \
                    and ev.dest == late.dest and ev.result == -errno.EINPROGRESS:
                pending[-back] = replace(ev, result=late.result)
                return True
        return False

    def _add_process(self, pe: ProcessEvent) -> None:
        ts = self._ts(pe)
        if pe.kind == "fork" and pe.ppid and pe.pid != pe.ppid:
            if self.lineage.fork(pe.pid, pe.ppid, ts):
                # A reused pid: the old program's command line is not this process's.
                self.cmdlines.pop(pe.pid, None)
        elif pe.kind == "exit":
            self.lineage.exit(pe.pid, ts)
        elif pe.kind == "thread" and pe.tid and pe.tid != pe.pid:
            self.lineage.thread(pe.tid, pe.pid, ts)
            self.stacks.thread(pe, ts)
            return  # its comm is the creating thread's; the process keeps its own
        elif pe.kind == "pool":
            # A pool worker (the plugin saw its Python target): since `ts` it runs what any
            # test submits, so its traffic is the running test's, wherever it was born.
            self._pool_workers[(pe.pid, pe.tid)] = ts if ts is not None else 0
            return
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
        if mk.phase == "setup":  # see flush(): events wait for the setup's fixture windows
            if mk.edge == "start":
                self._open_setups[(mk.pid, mk.nodeid)] = ts
            else:
                self._open_setups.pop((mk.pid, mk.nodeid), None)
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

    def _add_phase_edge(self, pe: PhaseEdge) -> None:
        """The plugin's usual record: what _add_fixture_windows and _add_marker do with the
        FixtureWindows, end Marker and start Marker it stands for, in that order."""
        pid, nodeid, ended, started = pe.pid, pe.nodeid, pe.ended, pe.started
        mono = self.clock == "mono"
        ts = pe.mono_ns if mono else pe.wall_ns
        end = (pe.end_mono_ns if mono else pe.end_wall_ns) if ended is not None else None
        if end is None:
            end = ts
        test = self.tests.get(nodeid)
        if test is None:
            test = self.tests[nodeid] = TestRecord(nodeid)
        test.worker, test.pid, test.ran = pe.worker, pid, True
        bucket = self.windows.get(pid)
        if bucket is None:
            bucket = self.windows[pid] = []
        if ended is not None:
            self.counts["markers"] += 1
            if pe.windows:
                self._add_windows(pid, ended, pe.windows)
            if pe.outcome:
                test.outcomes[ended] = pe.outcome
            if pe.duration_s is not None:
                test.durations[ended] = pe.duration_s
            if ended == "setup":
                self._open_setups.pop((pid, nodeid), None)
            for window in reversed(bucket):
                # (an end already written: the outcome of its report, which came later)
                if window.nodeid == nodeid and window.phase == ended \
                        and (window.end is None or window.end == end):
                    window.end, window.outcome = end, pe.outcome
                    break
            else:  # the start line was lost: keep a zero-length window
                _insert_sorted(bucket, Window(end, end, nodeid, ended, pe.worker, pe.outcome))
        if started is not None:
            self.counts["markers"] += 1
            if started == "setup":
                self._open_setups[(pid, nodeid)] = ts
            elif started == "teardown":
                self._teardown_cursor[pid] = ts
            window = Window(ts, None, nodeid, started, pe.worker)
            if not bucket or bucket[-1].start <= ts:
                bucket.append(window)
            else:
                _insert_sorted(bucket, window)

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

    def _add_fixture_windows(self, fw: FixtureWindows) -> None:
        self._add_windows(fw.pid, fw.when, fw.windows)

    def _add_windows(self, pid: int, when: str, windows: tuple) -> None:
        mono = self.clock == "mono"
        bucket = self.fixture_windows.get(pid)
        if bucket is None:
            bucket = self.fixture_windows[pid] = []
        scopes = self.fixture_scopes
        end = None
        for fid, start_mono, start_wall, end_mono, end_wall in windows:
            if fid not in scopes:
                scopes[fid] = "function"
            start, end = (start_mono, end_mono) if mono else (start_wall, end_wall)
            if not bucket or bucket[-1][0] < start:  # in order, as they mostly come
                bucket.append((start, end, fid, "function"))
            else:
                bucket.insert(bisect.bisect_right(bucket, (start,)),
                              (start, end, fid, "function"))
        if when == "teardown" and end is not None:
            # the plugin writes them before a wider fixture's teardown end: that one's
            # window begins where these ended
            self._teardown_cursor[pid] = max(end, self._teardown_cursor.get(pid, end))

    # -- attribution ---------------------------------------------------------------------
    def flush(self, watermark: int | None = None) -> None:
        """Attribute pending events stamped before `watermark` (all when None)."""
        if self.lost_pending:  # few: losses are rare, one record per process and epoch
            keep = []
            for lost in self.lost_pending:
                if watermark is None or lost.last_ns < watermark:
                    self._charge_lost(lost)
                else:
                    keep.append(lost)
            self.lost_pending = keep
        if watermark is None:
            ready, self.pending = self.pending, collections.deque()
            for ev in ready:
                self._attribute(ev)
            return
        # The function-scoped fixture windows of a setup arrive with its end: a setup that
        # runs longer than the watermark holds its events until then (the fixture names).
        # (Not for ever: a worker that died in a setup never ends it.)
        if self._open_setups:
            recent = [t for t in self._open_setups.values() if t > watermark - SETUP_HOLD_MAX_NS]
            watermark = min([watermark, *recent])
        # Events arrive nearly in time order: stop at the first one not old enough. One
        # that arrived late behind it waits for a later flush, which is harmless.
        pending, attr = self.pending, "mono_ns" if self.clock == "mono" else "wall_ns"
        while pending and (getattr(pending[0], attr) or 0) < watermark:
            self._attribute(pending.popleft())

    def finish(self) -> Attribution:
        self.flush(None)
        return Attribution(self.tests, self.unattributed, self.fixture_services,
                           self.fixture_scopes, dict(self.counts), self.unattributed_probes,
                           self.fixture_tests, self.names,
                           self.map.wire.describe(self.map.classify))

    def _owner(self, pid: int, ts: int) -> tuple[int | None, int | None]:
        """(nearest marker-writing ancestor-or-self of `pid` as it was at `ts`, the fork time
        of the branch below it: which window started the subprocess)."""
        current, at, fork_ts = pid, ts, None
        for _ in range(64):
            if current in self.windows or current in self.outer:
                return current, fork_ts
            parent = self.lineage.parent(current, at)
            if parent is None:
                return None, None
            current, fork_ts = parent
            # the ancestor as it was when it forked this branch (it may have exited since)
            at = fork_ts if fork_ts is not None else at
        return None, None

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

    def _suite_listener_unrecognised(self, ev: Event) -> bool:
        """Traffic to a listener of the traced tree whose protocol no client's bytes told
        (a helper proxy on a random port): the suite's own, no service; evidence only. A
        user rule naming it wins."""
        wire = self.map.wire
        if ev.dest.family not in ("inet", "inet6") or wire.listener(ev.dest) is None:
            return False
        learned = wire.recognised(ev.dest)
        if learned is not None and learned.recognition.protocol != AMBIGUOUS:
            return False
        return not self.map.named_by_user(ev.dest)

    def _locate(self, owner: int, ts: int) -> tuple[Window | None, str | None, Window | None]:
        """(the test window of `owner` that owns ts, the gap's name when ts falls between
        two phases of that test, the last window that started before ts)."""
        bucket = self.windows.get(owner, ())
        index = bisect.bisect_right(bucket, ts, key=_start) - 1
        if index < 0:
            return None, None, None
        window = bucket[index]
        if window.contains(ts):
            return window, None, window
        if window.phase == "teardown":
            return None, None, window
        # pytest's protocol always goes on with the same test: call if setup passed, then
        # teardown. The next phase's start marker may not have arrived yet.
        following = bucket[index + 1] if index + 1 < len(bucket) else None
        if following is not None:
            if following.nodeid != window.nodeid:
                return None, None, window  # a broken protocol (a crashed worker): not its gap
            after = following.phase
        else:
            after = "call" if window.phase == "setup" and window.outcome in (None, "passed") \
                else "teardown"
        return window, f"{window.phase}->{after}", window

    def _origin(self, owner: int, ev: Event, ts: int, fork_ts: int | None
                ) -> tuple[str, Window | None, bool]:
        """("process" or "thread", the test window the event's process or thread was started
        in, whether its traffic after that test ended outlived the test)."""
        if ev.pid != owner:
            started = None if fork_ts is None else self._locate(owner, fork_ts)[0]
            return "process", started, True
        birth = self.lineage.thread_birth(ev.tid, ev.pid, ts) if ev.tid != ev.pid else None
        if birth is None:
            return "thread", None, False
        marked = self._pool_workers.get((ev.pid, ev.tid))
        if marked is not None and marked >= birth:  # this very thread, not a reused tid
            return "thread", self._locate(owner, birth)[0], False
        key = (ev.tid, birth)
        origin = self._thread_origins.get(key)
        if origin is None:
            # A thread born inside a wider-scoped fixture serves every test that uses it.
            scope = self._fixture_at(owner, birth)[1]
            origin = ("thread", self._locate(owner, birth)[0], scope in (None, "function"))
            # Settled once the test it was born in has ended (a fixture's window is known
            # only at its end marker): only then is it worth keeping.
            if origin[1] is None or origin[1].end is not None:
                if len(self._thread_origins) >= 65536:
                    self._thread_origins.clear()
                self._thread_origins[key] = origin
        return origin

    def _fixture_at(self, pid: int, ts: int) -> tuple[str | None, str | None]:
        bucket = self.fixture_windows.get(pid, ())
        index = bisect.bisect_right(bucket, (ts, _INF))
        # Fixture windows are nearly disjoint (pytest sets up dependencies before the
        # dependant's hook runs); nesting comes only from getfixturevalue(), so a short
        # look back finds the innermost (latest-starting) window that contains ts.
        for start, end, fid, scope in reversed(bucket[max(0, index - 16):index]):
            if start <= ts <= end:
                return fid, scope
        return None, None

    def _learned(self, ev: Event) -> tuple:
        """The names the run learned for ev's address before ev (join/names.py)."""
        dest = canonical(ev.dest)
        if not self.names.knows(dest):
            return ()
        ts = self._ts(ev) or 0
        return self.names.names_for(dest, ts, self._owner(ev.pid, ts)[0], ev.pid, ev.tid,
                                    ev.kind)

    def _attribute(self, ev: Event) -> None:
        learned = self._learned(ev) if self.names else ()
        verdict = self.map.judge(ev.kind, ev.dest, ev.result,
                                 tuple(entry.name for entry in learned) if learned else ())
        if verdict.what == NOISE:
            self.counts["noise"] += 1
            self._ignored(ev, "noise")
            return
        if self.ignore_self_loopback and self._is_self_traffic(ev):
            self.counts["self_loopback"] += 1
            self._ignored(ev, "self_loopback")
            return
        if self.map.wire.listening and self._suite_listener_unrecognised(ev):
            self.counts["suite_listener"] = self.counts.get("suite_listener", 0) + 1
            self._ignored(ev, "suite_listener")
            return
        ts = self._ts(ev) or 0
        name, label, probe = verdict.name, verdict.label, verdict.what == PROBE
        owner, fork_ts = self._owner(ev.pid, ts)
        if owner is None:
            self._unattributed("not-under-pytest", "process outside the pytest tree",
                               name, label, probe, ev, ts, learned=learned)
            return
        window, gap, previous = self._locate(owner, ts)
        what, started, outlives = self._origin(owner, ev, ts, fork_ts)
        born_in = started.nodeid if started is not None and what == "thread" else None
        if outlives and started is not None and (window is None
                                                 or started.nodeid != window.nodeid):
            self._unattributed("outlived-test", f"{what} started in {started.nodeid}",
                               name, label, probe, ev, ts, born_in, owner,
                               lambda: self._test_end(owner, started), learned)
            return
        if window is None:
            self._outside_tests(owner, ts, previous, name, label, probe, ev, learned)
            return

        def evidence() -> dict:
            found = self._evidence(ev, window, ts, label, gap, born_in)
            if learned:
                found["names"] = [entry.as_dict() for entry in learned]
            return found

        def process() -> dict:
            return self._process(ev, owner, ts)

        fixture, scope = self._fixture_at(owner, ts)
        if verdict.what == DENIED:  # refused by the guard: the test that tried it needs it
            self._test(window.nodeid).denied[window.phase].setdefault(name, Contact()).add(
                ev, ts, evidence, fixture, label, gap, process, learned)
            self.counts["denied"] = self.counts.get("denied", 0) + 1
            return
        if probe:  # evidence, not a need: it stays with the test, whichever fixture ran it
            test = self._test(window.nodeid)
            test.probes[window.phase].setdefault(name, Contact()).add(
                ev, ts, evidence, fixture, label, gap, process, learned)
            self.counts["failed_probes"] += 1
            return
        if fixture and scope and scope != "function":
            # A class/module/session fixture serves every test that requests it, not the
            # test it happens to run in (the last test gets the session teardown): charge it
            # to the fixture; the report lists it as inherited by each dependent test.
            self.fixture_services.setdefault(fixture, {}).setdefault(name, Contact()).add(
                ev, ts, lambda: {**evidence(), "test": window.nodeid}, fixture, label, gap,
                process, learned)
            seen_in = self.fixture_tests.setdefault(fixture, {})
            if window.nodeid in seen_in or len(seen_in) < 64:
                seen_in.setdefault(window.nodeid, set()).add(window.phase)
        else:
            test = self._test(window.nodeid)
            test.phases[window.phase].setdefault(name, Contact()).add(
                ev, ts, evidence, fixture, label, gap, process, learned)
        self.counts["attributed"] += 1

    def _charge_lost(self, lost: Lost) -> None:
        """Charge `lost.count` lost records to each test whose phase windows (or the gaps
        between them) of the owning pytest process overlap [first_ns, last_ns]."""
        owner = self._owner(lost.pid, lost.first_ns)[0] if self.clock == "mono" else None
        charged = self._windows_over(owner, lost.first_ns, lost.last_ns) \
            if owner is not None else set()
        for nodeid in charged:
            self._test(nodeid).lost += lost.count
        key = "lost_in_tests" if charged else "lost_outside_tests"
        self.counts[key] = self.counts.get(key, 0) + lost.count

    def _windows_over(self, owner: int, first: int, last: int) -> set[str]:
        """The tests of `owner` with a phase window, or a gap after one, in [first, last]."""
        bucket = self.windows.get(owner, ())
        found = set()
        # a process's phase windows follow one another: walk back from the last that
        # starts in the loss to the first that ended before it
        for index in range(bisect.bisect_right(bucket, last, key=_start) - 1, -1, -1):
            window = bucket[index]
            if window.end is not None and window.end < first:
                break
            found.add(window.nodeid)
        for ts in (first, last):  # a gap between two phases belongs to the test
            window = self._locate(owner, ts)[0]
            if window is not None:
                found.add(window.nodeid)
        return found

    def _outside_tests(self, owner: int, ts: int, previous: Window | None, name: str,
                       label: str, probe: bool, ev: Event, learned: tuple = ()) -> None:
        # Collection is nested in the session window: look for each, not for the latest.
        inside = {w.phase: w for w in self.outer.get(owner, ()) if w.contains(ts)}
        session = next((w for w in self.outer.get(owner, ()) if w.phase == "session"), None)
        if "collection" in inside:
            reason, detail = "collection", "while pytest collected tests"
        elif "session" in inside and previous is not None:
            reason, detail = "between-tests", f"after {previous.nodeid} ({previous.phase})"
        elif "session" in inside:
            reason, detail = "session", "session start, before the first test"
        elif session is not None and session.end is not None and ts > session.end:
            reason, detail = "outside-session", "after pytest's session ended"
        elif previous is not None:  # no session window seen: its markers were lost
            reason, detail = "between-tests", f"after {previous.nodeid} ({previous.phase})"
        else:
            reason, detail = "outside-session", "before pytest's session started"
        ended = previous.end if previous is not None and reason == "between-tests" else None
        self._unattributed(reason, detail, name, label, probe, ev, ts, None, owner,
                           lambda: ended, learned)

    def _test_end(self, owner: int, window: Window) -> int | None:
        """When the test of `window` ended: the end of its last phase window seen."""
        ends = [w.end for w in self.windows.get(owner, ())
                if w.nodeid == window.nodeid and w.end is not None]
        return max(ends) if ends else window.end

    def _unattributed(self, reason: str, detail: str, name: str, label: str, probe: bool,
                      ev: Event, ts: int, born_in: str | None = None,
                      owner: int | None = None, ended=lambda: None,
                      learned: tuple = ()) -> None:
        """`ended()`: when the test the detail names ended, for `after_ms` (the first
        event's evidence only: called once per bucket and service)."""
        where = self.unattributed_probes if probe else self.unattributed
        bucket = where.setdefault((reason, detail), {})

        def evidence() -> dict:
            found = self._evidence(ev, None, ts, label, None, born_in)
            since = ended()
            found["after_ms"] = round((ts - since) / 1e6, 3) if since is not None else None
            if learned:
                found["names"] = [entry.as_dict() for entry in learned]
            return found

        bucket.setdefault(name, Contact()).add(
            ev, ts, evidence, None, label,
            None, lambda: self._process(ev, owner, ts), learned)
        self.counts["failed_probes" if probe else "unattributed"] += 1

    def _ignored(self, ev: Event, why: str) -> None:
        """Count traffic the rules set aside against the test whose window it fell in."""
        ts = self._ts(ev) or 0
        owner = self._owner(ev.pid, ts)[0]
        window = self._locate(owner, ts)[0] if owner is not None else None
        if window is None:
            return
        labels = self._test(window.nodeid).ignored.setdefault(why, {})
        dest = ev.dest
        if why == "self_loopback" and ev.local_port and \
                ev.local_port in self.listeners.get(ev.pid, ()):
            # a reply of the test's own server: its destination is the client's ephemeral
            # port; the listener it answers for is what a reader recognises
            dest = replace(dest, port=ev.local_port)
        label = dest.label()
        if label not in labels and len(labels) >= MAX_KEPT:
            label = MORE_DESTINATIONS
        labels[label] = labels.get(label, 0) + max(ev.count, 1)

    def _process(self, ev: Event, owner: int | None, ts: int) -> dict:
        parent = self.lineage.parent(ev.pid, ts)
        return {"ppid": parent[0] if parent else None,
                "cmdline": self.cmdlines.get(ev.pid) or self.comms.get(ev.pid, ""),
                "role": ("pytest" if ev.pid == owner else
                         "subprocess" if owner is not None else "outside pytest")}

    def _evidence(self, ev: Event, window: Window | None, ts: int, label: str,
                  gap: str | None, born_in: str | None) -> dict:
        # In a gap the offset counts from the end of the phase before it.
        since = (window.end if gap else window.start) if window else None
        found = self.stacks.evidence(ev.pid, ev.tid, ts, ev.comm,
                                     window.nodeid.split("::")[0] if window else None
                                     ) if self.stacks else None
        evidence = {
            "phase": window.phase if window else None,
            "gap": gap,
            "offset_ms": round((ts - since) / 1e6, 3) if since is not None else None,
            "pid": ev.pid,
            "tid": ev.tid,
            "thread": ev.comm,
            "background": ev.tid != ev.pid,
            "born_in": born_in,
            "cmdline": self.cmdlines.get(ev.pid) or self.comms.get(ev.pid, ""),
            "destination": label,
            "kind": ev.kind,
            "result": result_text(ev.kind, ev.result),
        }
        if found:
            evidence["stack"] = found
        return evidence
