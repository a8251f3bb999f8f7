"""Shared record types: what backends and the plugin produce, what attribution consumes (pure)."""
from __future__ import annotations

from dataclasses import dataclass, field

# Phases of one test, in pytest's order.
TEST_PHASES = ("setup", "call", "teardown")
# Windows outside tests (one per process that writes markers).
OUTER_PHASES = ("session", "collection")


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a connect or send went.

    family: "inet" | "inet6" | "unix" | "netlink" | "other"
    transport: "tcp" | "udp" | "unix" | "other"
    address: IP text ("127.0.0.1", "::1"), unix path, "@name" for an abstract unix name,
             or "" when unknown.
    port: destination port for inet/inet6, else None.
    """

    family: str
    transport: str
    address: str
    port: int | None = None

    def label(self) -> str:
        """Human/stable text used for unknown services, e.g. "tcp:10.0.0.5:8080"."""
        if self.family in ("inet", "inet6"):
            host = f"[{self.address}]" if self.family == "inet6" else self.address
            return f"{self.transport}:{host}:{self.port}"
        if self.family == "unix":
            return f"unix:{self.address}"
        return f"{self.family}:{self.address}"


@dataclass(frozen=True, slots=True)
class Event:
    """One socket operation seen by a backend.

    kind: "connect" (an attempt; result 0 or -errno, -115 EINPROGRESS counts as made),
          "send" (result = bytes sent or -errno), or
          "listen" (the process listens on dest; used to drop its own loopback traffic).
    mono_ns / wall_ns: CLOCK_MONOTONIC / CLOCK_REALTIME in ns; a backend fills the clock it
          has and leaves the other None (ebpf + inprocess: mono; strace: wall).
    pid / tid: process (tgid) and thread id. comm: thread name ("rdk:broker-1").
    local_port: the socket's own port where known (server-side replies are not contacts).
    count: how many operations the record stands for: the eBPF backend folds sends on one
          socket (kernel_join: of one thread to one destination), and (kernel_join)
          connects of one thread to one destination with one result, between two marker
          writes of the owning process into the first record and a final "tail" record
          (count = the others, time and thread = the last). A connect tail's result is
          the settled one: a later failure of a folded connect is in its result, never a
          separate connect_result.
    first_bytes: a send that was the process's first on its socket (first datagram to a
          destination): up to the first few hundred bytes it sent, for protocol
          recognition only (join/protocols.py); never written anywhere. None otherwise.
          With count n: n connections (sockets) that each sent these very bytes first
          (kernel_join folds them).
    kind "connect_result": a non-blocking connect (reported as -EINPROGRESS) failed later;
          same time and destination as its connect, result = -errno.
    """

    kind: str
    mono_ns: int | None
    wall_ns: int | None
    pid: int
    tid: int
    comm: str
    dest: Destination
    result: int = 0
    local_port: int | None = None
    count: int = 1
    first_bytes: bytes | None = None


@dataclass(frozen=True, slots=True)
class ProcessEvent:
    """Process lifecycle from a backend: kind "fork" (pid is the child, ppid the parent),
    "exec" (pid now runs comm/cmdline), "exit", or "thread": a new thread `tid` was born in
    process `pid`, created by thread `ppid`. From the plugin, "pool": thread `tid` of `pid`
    is a worker of an executor pool (comm = its Python name). A reused pid or tid is always
    announced by a new fork or thread record, which replaces what was known of the old one."""

    kind: str
    mono_ns: int | None
    wall_ns: int | None
    pid: int
    ppid: int = 0
    comm: str = ""
    cmdline: tuple[str, ...] = ()
    tid: int = 0


@dataclass(frozen=True, slots=True)
class Marker:
    """A phase edge written by the pytest plugin.

    phase: "setup" | "call" | "teardown" (nodeid set) or "session" | "collection" (nodeid "").
    edge: "start" | "end". outcome: at a test phase's end, pytest's report of that phase:
    "passed" | "failed" | "skipped" | "xfailed" | "xpassed" ("interrupted" when Ctrl-C or
    pytest.exit left the phase without a report); None for session and collection.
    worker: xdist worker id ("gw0") or None.
    """

    mono_ns: int
    wall_ns: int
    pid: int
    worker: str | None
    nodeid: str
    phase: str
    edge: str
    outcome: str | None = None
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class PhaseEdge:
    """One phase edge of a test as the plugin writes it: the end of `ended` and the start of
    `started`, in one record (two Markers' worth, with the ended phase's function-scoped
    fixture windows): ~4 records a test instead of ~9.

    started: the phase starting at mono_ns/wall_ns, or None (the test's last edge); ended:
    the phase ending at end_mono_ns/end_wall_ns (its report, a moment before the next phase
    starts), or when None at mono_ns/wall_ns; None for the test's first edge. outcome,
    duration_s: pytest's report of `ended` ("interrupted" when Ctrl-C or pytest.exit left
    it unreported); windows: as FixtureWindows.windows, for `ended`.
    """

    pid: int
    worker: str | None
    nodeid: str
    mono_ns: int
    wall_ns: int
    started: str | None
    ended: str | None = None
    outcome: str | None = None
    duration_s: float | None = None
    windows: tuple = ()
    end_mono_ns: int | None = None
    end_wall_ns: int | None = None


@dataclass(frozen=True, slots=True)
class FixtureMarker:
    """Setup or teardown edge of a fixture whose scope is wider than a function.

    fixture: "<baseid>::<argname>" (stable across processes); when: "setup" | "teardown".
    """

    mono_ns: int
    wall_ns: int
    pid: int
    fixture: str
    scope: str
    when: str
    edge: str


@dataclass(frozen=True, slots=True)
class FixtureWindows:
    """The function-scoped fixtures' setup (or teardown) windows of one test phase, in one
    record: their three edge records each were a third of the plugin's records.

    when: "setup" | "teardown"; windows: ((fixture id, start mono_ns, start wall_ns,
    end mono_ns, end wall_ns), ...). A teardown window starts where the previous finalizer
    (or the teardown phase) ended: pytest reports only a finalizer's end.
    """

    pid: int
    when: str
    windows: tuple = ()


@dataclass(frozen=True, slots=True)
class TestInfo:
    """Facts about one collected test, sent at collection; sent again, replacing the first,
    when the test pulled fixtures at run time (request.getfixturevalue)."""

    __test__ = False  # not a pytest test class

    nodeid: str
    fixtures: tuple[str, ...] = ()  # fixture ids ("<baseid>::<argname>"): closure + pulled
    markers: tuple[str, ...] = ()   # marker names on the item
    path: str = ""                  # file path relative to rootdir
    bases: tuple[str, ...] = ()     # base class names of its class, if any
    worker: str | None = None
    # in-process backend, sent again at the test's end: C client libraries loaded in its
    # process that the backend cannot see ("libpq (psycopg2)"): its answer is incomplete
    unseen: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Freeze:
    """--stacks, eBPF: the kernel stopped process `pid` (SIGSTOP) right after thread `tid`'s
    record at mono_ns: its first contact with `dest` since the last marker write (trigger
    "connect" | "send"), or its creation by thread `creator` (trigger "thread"). Whoever
    reads this must resume the process (SIGCONT). epoch: the marker epoch, for dedupe."""

    mono_ns: int
    pid: int
    tid: int
    comm: str
    trigger: str
    dest: Destination | None = None
    creator: int = 0
    epoch: int = 0


@dataclass(frozen=True, slots=True)
class Stack:
    """--stacks: the Python stacks of process `pid` for thread `tid`'s record at mono_ns
    (trigger "connect" | "send" | "thread": then `creator` created thread tid).

    threads: ({"tid": int, "name": str, "frames": [{"file", "line", "function"}, ...]}, ...),
    innermost frame first; only threads running Python. late_ms: None when taken while the
    process was held at the record (frozen, or inside the call itself in-process), else how
    long after it. held_ms: how long the process was stopped for it. error: why no stacks."""

    mono_ns: int | None
    pid: int
    tid: int
    trigger: str
    creator: int = 0
    threads: tuple = ()
    how: str = "frozen"           # "frozen" (eBPF SIGSTOP) | "in-call" (in-process patch)
    late_ms: float | None = None
    held_ms: float | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class Lookup:
    """A host name lookup by the traced tree, as a backend saw it.

    how "dns": `payload` is one DNS message the tree received from `server` (port 53) on a
    socket it sent a query from; the join parses it (join/dns.py), the backend does not.
    how "nss": the C library's getaddrinfo(`name`) in the tree returned `addresses` (the
    hosts file, nss modules, or DNS behind them).
    """

    how: str
    mono_ns: int | None
    wall_ns: int | None
    pid: int
    tid: int
    server: Destination | None = None
    payload: bytes = b""
    name: str = ""
    addresses: tuple[str, ...] = ()
    stream: bool = False  # DNS over TCP: payload is stream bytes (2-byte length prefixes)
    held: bool = False  # eBPF: the process is stopped until the reader sends it SIGCONT


@dataclass(frozen=True, slots=True)
class Lost:
    """eBPF: `count` records of process `pid` did not fit in the full ring buffer, the
    first at first_ns and the last at last_ns (CLOCK_MONOTONIC): whatever they said (a
    contact, a fork, an exit) is missing. One per process and marker epoch, so the window
    lies between two phase edges of the process that wrote the markers."""

    pid: int
    first_ns: int
    last_ns: int
    count: int


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Backend-independent facts about the traced run (filled by the runner or plugin)."""

    backend: str
    command: tuple[str, ...] = ()
    blind_spots: tuple[str, ...] = ()
    exit_code: int | None = None
    extra: dict = field(default_factory=dict)


Record = (Event | ProcessEvent | Marker | FixtureMarker | TestInfo | Freeze | Stack
          | Lookup | Lost)
