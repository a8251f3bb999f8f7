"""The eBPF backend against real sockets: a forked child's tree is traced, nothing else is."""
from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from svctrace.capture.base import RunContext
from svctrace.capture.ebpf import (_EVENT, _FIRST_SIZE, FIRST_BYTES_SYSCALLS, EbpfBackend,
                                   decode, diagnose)
from svctrace.events import Destination, Event, Lost, ProcessEvent
from tests.support.backends import needs_backend
from tests.support.traced import records_until_exit, traced_fork, traced_fork_then_stop

# Only the kernel tests need the capability; decoding is pure and runs everywhere.
needs_ebpf = needs_backend("ebpf")

THREAD_NAME = "svct-sender"
PR_SET_NAME = 15


@pytest.fixture(scope="module")
def backend():
    tracer = EbpfBackend()
    tracer.prepare(RunContext(command=["test"]))
    yield tracer
    tracer.stop()


class Servers:
    """Listeners the traced child talks to, owned by the (untraced) test process."""

    def __init__(self, tmp: Path) -> None:
        self.tcp = _listen(socket.AF_INET, ("127.0.0.1", 0))
        self.tcp6 = _listen(socket.AF_INET6, ("::1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix_path = str(tmp / "svc.sock")
        self.unix = _listen(socket.AF_UNIX, self.unix_path)
        self.abstract = f"svctrace-test-{os.getpid()}"
        self.unix_abstract = _listen(socket.AF_UNIX, "\0" + self.abstract)
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        self.closed_port = closed.getsockname()[1]  # bound, never listening: refused
        self._keep = [closed]

    def port(self, sock: socket.socket) -> int:
        return sock.getsockname()[1]


def _listen(family: int, addr) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(addr)
    sock.listen(16)  # never accepted: the backlog completes the handshake
    return sock


def _timed(log: dict, key: str, fn):
    before = time.monotonic_ns()
    try:
        return fn()
    finally:  # a refused connect raises: its window still counts
        log[key] = [before, time.monotonic_ns()]


def _marker_write() -> None:
    """What the plugin's marker writes look like to the kernel (a line starting RS "[")."""
    fd = os.open(os.devnull, os.O_WRONLY)
    os.write(fd, b'\x1e["m"]\n')
    os.close(fd)


def _child_work(srv: Servers, report) -> None:
    """What the traced child does; it reports its ids, ports and op time windows as JSON."""
    log: dict = {"pid": os.getpid(), "t": {}}
    t = log["t"]
    tcp_port, tcp6_port, udp_port = srv.port(srv.tcp), srv.port(srv.tcp6), srv.port(srv.udp)

    s = _timed(t, "tcp_connect", lambda: socket.create_connection(("127.0.0.1", tcp_port)))
    log["tcp_lport"] = s.getsockname()[1]
    _timed(t, "tcp_send", lambda: s.send(b"hello"))
    try:
        _timed(t, "refused", lambda: socket.create_connection(("127.0.0.1", srv.closed_port)))
    except ConnectionRefusedError:
        pass
    s6 = _timed(t, "tcp6_connect", lambda: socket.create_connection(("::1", tcp6_port)))
    log["tcp6_lport"] = s6.getsockname()[1]
    s6.sendall(b"v6")
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _timed(t, "udp_sendto", lambda: u.sendto(b"dgram", ("127.0.0.1", udp_port)))
    log["udp_lport"] = u.getsockname()[1]
    _marker_write()  # a new epoch: the next send on the same socket is a record of its own
    u.sendmsg([b"msg"], [], 0, ("127.0.0.1", udp_port))  # destination in msg_name
    un = socket.socket(socket.AF_UNIX)
    _timed(t, "unix_connect", lambda: un.connect(srv.unix_path))
    os.write(un.fileno(), b"w")  # write(2): joined to the path through the fd
    ua = socket.socket(socket.AF_UNIX)
    ua.connect("\0" + srv.abstract)
    ua.send(b"abstract")
    # dup2 over the path socket's fd: later writes there go to the abstract peer, never
    # to the path the fd number was connected to before (the peer is read from the socket)
    _marker_write()
    os.dup2(ua.fileno(), un.fileno())
    os.write(un.fileno(), b"dup")
    a, _b = socket.socketpair()
    a.send(b"?")  # no peer path anywhere: counted, not reported

    def sender() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, THREAD_NAME.encode(), 0, 0, 0)
        log["thread_tid"] = threading.get_native_id()
        conn = socket.create_connection(("127.0.0.1", tcp_port))
        conn.send(b"from thread")
        conn.close()

    thread = threading.Thread(target=sender)
    thread.start()
    thread.join()

    code = f"import socket; socket.create_connection(('127.0.0.1', {tcp_port})).send(b'gc')"
    proc = subprocess.Popen([sys.executable, "-c", code])
    proc.wait()
    log["grandchild"] = proc.pid
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen()
    log["listen_port"] = lst.getsockname()[1]
    report.write(json.dumps(log).encode())
    report.flush()


def _run_traced_child(backend: EbpfBackend, srv: Servers
                      ) -> tuple[dict, list, int, int]:
    """Fork a child blocked on a pipe, trace it, release it; collect until it exits."""
    go_r, go_w = os.pipe()
    rep_r, rep_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(go_w)
            os.close(rep_r)
            os.read(go_r, 1)
            with os.fdopen(rep_w, "wb") as report:
                _child_work(srv, report)
            code = 0
        finally:
            os._exit(code)
    os.close(go_r)
    os.close(rep_w)
    backend.child_started(pid)
    t_start = time.monotonic_ns()
    os.write(go_w, b"x")
    # Untraced traffic at the same time: the test process itself and an unrelated process.
    with socket.create_connection(("127.0.0.1", srv.port(srv.tcp))) as mine:
        mine.send(b"not traced")
    code = f"import socket; socket.create_connection(('127.0.0.1', {srv.port(srv.tcp)}))"
    subprocess.run([sys.executable, "-c", code], check=True)
    with os.fdopen(rep_r, "rb") as report:
        log = json.loads(report.read() or b"{}")
    _, status = os.waitpid(pid, 0)
    t_end = time.monotonic_ns()
    assert status == 0, "traced child failed (see captured stderr)"
    return log, records_until_exit(backend, pid), t_start, t_end


@needs_ebpf
def test_traces_the_child_tree_exactly(backend: EbpfBackend, tmp_path: Path) -> None:
    srv = Servers(tmp_path)
    unknown_before = backend.stats()["sends_unknown_dest"]
    log, records, t_start, t_end = _run_traced_child(backend, srv)
    pid, gc, ttid = log["pid"], log["grandchild"], log["thread_tid"]
    tcp, tcp6, udp = srv.port(srv.tcp), srv.port(srv.tcp6), srv.port(srv.udp)
    comm = Path(sys.executable).name[:15]  # the grandchild exec'd sys.executable
    parent_comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()  # fork keeps it

    # Nothing from outside the tree: not the test process, not the unrelated subprocess.
    assert {r.pid for r in records} == {pid, gc}

    def ev(kind, family, transport, address, port, result, lport=None, tid=pid, who=pid,
           name=parent_comm):
        return (kind, who, tid, name, Destination(family, transport, address, port), result,
                lport)

    def key(r: Event):
        return (r.kind, r.pid, r.tid, r.comm, r.dest, r.result, r.local_port)

    main = [key(r) for r in records if isinstance(r, Event) and r.tid == pid]
    assert main == [
        ev("connect", "inet", "tcp", "127.0.0.1", tcp, 0),
        ev("send", "inet", "tcp", "127.0.0.1", tcp, 5, log["tcp_lport"]),
        ev("connect", "inet", "tcp", "127.0.0.1", srv.closed_port, -111),
        ev("connect", "inet6", "tcp", "::1", tcp6, 0),
        ev("send", "inet6", "tcp", "::1", tcp6, 2, log["tcp6_lport"]),
        ev("send", "inet", "udp", "127.0.0.1", udp, 5, log["udp_lport"]),
        ev("send", "inet", "udp", "127.0.0.1", udp, 3, log["udp_lport"]),
        ev("connect", "unix", "unix", srv.unix_path, None, 0),
        ev("send", "unix", "unix", srv.unix_path, None, 1),
        ev("connect", "unix", "unix", "@" + srv.abstract, None, 0),
        ev("send", "unix", "unix", "@" + srv.abstract, None, 8),
        ev("send", "unix", "unix", "@" + srv.abstract, None, 3),
        ev("listen", "inet", "tcp", "127.0.0.1", log["listen_port"], 0, log["listen_port"]),
    ]
    thread = [key(r) for r in records if isinstance(r, Event) and r.tid == ttid]
    assert thread[0] == ev("connect", "inet", "tcp", "127.0.0.1", tcp, 0, tid=ttid,
                           name=THREAD_NAME)
    assert thread[1][:6] == ev("send", "inet", "tcp", "127.0.0.1", tcp, 11, tid=ttid,
                               name=THREAD_NAME)[:6]
    assert len(thread) == 2

    # A vfork parent (subprocess) returns after its child's exec, so a fork record can come
    # after the child's first records: read them in time order (the fork's is the call's start).
    grandchild = [r for r in records if r.pid == gc]
    assert [(r.kind, r.ppid) for r in sorted(grandchild, key=lambda r: r.mono_ns) if
            isinstance(r, ProcessEvent)] == [("fork", pid), ("exec", 0), ("exit", 0)]
    exec_event = next(r for r in grandchild if r.kind == "exec")
    assert exec_event.comm == comm and exec_event.cmdline[0] == sys.executable
    assert [key(r)[:6] for r in grandchild if isinstance(r, Event)] == [
        ev("connect", "inet", "tcp", "127.0.0.1", tcp, 0, who=gc, tid=gc, name=comm)[:6],
        ev("send", "inet", "tcp", "127.0.0.1", tcp, 2, who=gc, tid=gc, name=comm)[:6],
    ]
    process = [(r.kind, r.pid, r.tid, r.ppid) for r in sorted(records, key=lambda r: r.mono_ns)
               if isinstance(r, ProcessEvent)]
    # the thread is announced with its own tid and its creator (the main thread)
    assert process == [("thread", pid, ttid, pid), ("fork", gc, 0, pid), ("exec", gc, 0, 0),
                       ("exit", gc, 0, 0), ("exit", pid, 0, 0)]

    # Clocks: every stamp is CLOCK_MONOTONIC, inside the window of its operation.
    assert all(t_start <= r.mono_ns <= t_end and r.wall_ns is None for r in records)
    windows = log["t"]
    for op, index in (("tcp_connect", 0), ("tcp_send", 1), ("refused", 2),
                      ("tcp6_connect", 3), ("udp_sendto", 5), ("unix_connect", 7)):
        stamp = [r for r in records if isinstance(r, Event) and r.tid == pid][index].mono_ns
        assert windows[op][0] <= stamp <= windows[op][1], op

    stats = backend.stats()
    assert stats["lost_events"] == 0
    assert stats["sends_unknown_dest"] - unknown_before == 1  # the socketpair send
    assert stats["events"] >= len(records)


@needs_ebpf
def test_lost_events_are_counted(tmp_path: Path) -> None:
    """A one-page ring buffer that nobody drains overflows; the loss is counted, not hidden."""
    small = EbpfBackend()
    small.prepare(RunContext(command=["test"], settings={"ringbuf_pages": 1}))
    try:
        srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        srv.bind(("127.0.0.1", 0))
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.read(go_r, 1)
                out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                for _ in range(200):
                    _marker_write()  # each send in its own epoch: 200 records, none folded
                    out.sendto(b"x", srv.getsockname())
            finally:
                os._exit(0)
        small.child_started(pid)
        before = time.monotonic_ns()
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
        after = time.monotonic_ns()
        records = small.stop()
        sends = [r for r in records if isinstance(r, Event) and r.kind == "send"]
        stats = small.stats()
        assert 0 < len(sends) < 200
        assert stats["lost_events"] > 0
        assert stats["events"] + stats["lost_events"] == 201  # 200 sends + the exit
        assert stats["ringbuf_bytes"] == os.sysconf("SC_PAGE_SIZE")
        # ...and said per process: one window per marker epoch, every loss in one of them
        losses = [r for r in records if isinstance(r, Lost)]
        assert losses and {r.pid for r in losses} == {pid}
        assert sum(r.count for r in losses) == stats["lost_events"]
        assert all(before <= r.first_ns <= r.last_ns <= after for r in losses)
        assert "lost_unkept" not in stats
    finally:
        small.stop()


@needs_ebpf
def test_doctor_compiles_and_loads() -> None:
    results = diagnose()
    assert all(ok for _name, ok, _detail in results), results
    assert results[-1][0] == "compile+load"
    # where the kernel has BPF's atomic fetch-and-add the join is on, and doctor says so
    join = dict((name, detail) for name, _ok, detail in results)["kernel join"]
    release = tuple(map(int, re.match(r"(\d+)\.(\d+)", os.uname().release).groups()))
    expected = "off (" if release < (5, 12) else "on ("
    assert join.startswith(expected), join


@needs_ebpf
def test_unavailable_reason_is_cheap() -> None:
    start = time.monotonic()
    assert EbpfBackend.unavailable_reason() is None
    assert time.monotonic() - start < 2.0


def _record(kind: int, family: int, proto: int, addr: bytes, dport: int = 0, lport: int = 0,
            result: int = 0) -> bytes:
    return _EVENT.pack(123, 10, 11, 0, result, b"rdk:broker-1", dport, lport, kind, family,
                       proto, len(addr), addr, 0)


def test_decode_records() -> None:
    """The user-space half of the svct_event contract (bpf/svctrace.h), no kernel needed."""
    assert _EVENT.size == 160
    v6 = decode(_record(1, 10, 1, bytes(15) + b"\1", dport=5432, result=-115))
    assert v6 == Event("connect", 123, None, 10, 11, "rdk:broker-1",
                       Destination("inet6", "tcp", "::1", 5432), -115, None)
    send = decode(_record(2, 2, 2, bytes([10, 0, 0, 5]), dport=8125, lport=4000, result=3))
    assert send.dest == Destination("inet", "udp", "10.0.0.5", 8125)
    assert send.local_port == 4000
    abstract = decode(_record(1, 1, 3, b"\0name\0with nul"))
    assert abstract.dest == Destination("unix", "unix", "@name\0with nul")
    path = decode(_record(2, 1, 3, b"/run/postgresql/.s.PGSQL.5432\0"))
    assert path.dest == Destination("unix", "unix", "/run/postgresql/.s.PGSQL.5432")
    listen = decode(_record(3, 2, 1, bytes([127, 0, 0, 1]), lport=9092))
    assert listen.dest == Destination("inet", "tcp", "127.0.0.1", 9092)
    unknown = decode(_record(1, 40, 0, b""))  # AF_VSOCK
    assert unknown.dest == Destination("other", "other", "", None)
    fork = decode(_EVENT.pack(5, 20, 20, 10, 0, b"sh", 0, 0, 4, 0, 0, 0, b"", 0))
    assert fork == ProcessEvent("fork", 5, None, 20, ppid=10, comm="sh")
    thread = decode(_EVENT.pack(7, 20, 23, 21, 0, b"rdk:main", 0, 0, 8, 0, 0, 0, b"", 0))
    assert thread == ProcessEvent("thread", 7, None, 20, ppid=21, comm="rdk:main", tid=23)


@needs_ebpf
def test_sends_between_marker_writes_are_folded_with_exact_counts(tmp_path: Path) -> None:
    """A tight loop costs one record per socket and epoch; the tail keeps count and time."""
    tracer = EbpfBackend()
    tracer.prepare(RunContext(command=["test"]))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    stamps = {}

    def work():
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.connect(sink.getsockname())
        for _ in range(1000):
            out.send(b"x")
        stamps["a"] = time.monotonic_ns()
        _marker_write()
        for _ in range(500):
            out.send(b"y")

    pid, records = traced_fork_then_stop(tracer, work)
    # a tail is reserved after the record that ends its epoch: order by time
    sends = sorted((r for r in records if isinstance(r, Event) and r.kind == "send"),
                   key=lambda r: r.mono_ns)
    assert [r.count for r in sends] == [1, 999, 1, 499]
    assert sum(r.count for r in sends) == 1500
    assert sends[0].mono_ns <= sends[1].mono_ns < sends[2].mono_ns <= sends[3].mono_ns
    assert tracer.stats()["lost_events"] == 0


@needs_ebpf
def test_refused_nonblocking_connect_reports_its_late_failure(tmp_path: Path) -> None:
    """libpq and librdkafka connect non-blocking: -EINPROGRESS now, ECONNREFUSED later."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    tracer = EbpfBackend()
    tracer.prepare(RunContext(command=["test"]))

    def work():
        sock = socket.socket()
        sock.setblocking(False)
        assert sock.connect_ex(("127.0.0.1", port)) == 115
        # writable once the handshake has ended (here: refused), not after a guessed time
        assert select.select([], [sock], [], 10)[1] == [sock]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 111

    try:
        _, records = traced_fork(tracer, work)
    finally:
        tracer.stop()
    connects = [(r.kind, r.result, r.dest.port) for r in records
                if isinstance(r, Event) and r.kind.startswith("connect")]
    assert connects == [("connect", -115, port), ("connect_result", -111, port)]
    first, result = [r for r in records if isinstance(r, Event)]
    assert result.mono_ns == first.mono_ns and result.tid == first.tid


@needs_ebpf
def test_folded_sends_lost_to_lru_eviction_are_counted(tmp_path: Path) -> None:
    """More sockets than the folding map holds: a record evicted before its tail was
    reported takes its folded count with it. That loss is counted, never silent."""
    tracer = EbpfBackend()
    tracer.prepare(RunContext(command=["test"], settings={"aggs_max": 4}))
    sockets, per_socket = 64, 5
    # one destination each: with kernel_join, sockets to one destination share a record
    sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
    for sink in sinks:
        sink.bind(("127.0.0.1", 0))

    def work():
        outs = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(sockets)]
        for out, sink in zip(outs, sinks):
            out.connect(sink.getsockname())
            for _ in range(per_socket):
                out.send(b"x")

    _, records = traced_fork_then_stop(tracer, work)
    reported = sum(r.count for r in records if isinstance(r, Event) and r.kind == "send")
    stats = tracer.stats()
    assert stats["evicted_sends"] > 0
    assert reported + stats["evicted_sends"] == sockets * per_socket
    assert stats["lost_events"] == 0


@needs_ebpf
@pytest.mark.parametrize("join", [False, True])
def test_first_send_carries_its_first_bytes_for_every_send_syscall(tmp_path: Path,
                                                                   join: bool) -> None:
    """write, send(to), sendmsg, sendmmsg (first iovec) and writev: the kernel keeps the
    first bytes of a socket's first send only; later sends carry none. kernel_join folds
    a later socket's sends into an earlier one's record only when its first bytes are the
    same: these all differ."""
    if platform.machine() not in FIRST_BYTES_SYSCALLS:
        pytest.skip(f"first-send bytes are not read on {platform.machine()} (x86_64 only)")
    tracer = EbpfBackend()
    tracer.prepare(RunContext(command=["test"], settings={"kernel_join": join}))
    server = _listen(socket.AF_INET, ("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    big = b"GET / HTTP/1.1\r\nHost: billing.internal:8080\r\n" + b"x" * 1000

    def work():
        for how in ("write", "send", "sendmsg", "writev", "big"):
            c = socket.create_connection(server.getsockname())
            head = f"{how}-first".encode()
            if how == "write":
                os.write(c.fileno(), head)
            elif how == "send":
                c.send(head)
            elif how == "sendmsg":
                c.sendmsg([head, b"-second-iovec"])
            elif how == "writev":
                os.writev(c.fileno(), [head, b"-second-iovec"])
            else:
                c.sendall(big)
            c.send(b"later")
            c.close()
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.sendto(b"stats.one:1|c", udp.getsockname())
        out.sendto(b"stats.two:1|c", udp.getsockname())

    accepted = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                pass

    acceptor = threading.Thread(target=accept)
    acceptor.start()
    try:
        pid, records = traced_fork_then_stop(tracer, work)
    finally:
        stop.set()
        acceptor.join()
    sends = [r for r in records if isinstance(r, Event) and r.kind == "send"
             and r.pid == pid]
    firsts = sorted(r.first_bytes for r in sends if r.first_bytes is not None)
    assert firsts == sorted([b"write-first", b"send-first", b"sendmsg-first",
                             b"writev-first", big[:256], b"stats.one:1|c"])
    # the later sends on each socket were sent and carry nothing
    assert sum(r.count for r in sends if r.first_bytes is None) >= 6
    tcp = sum(r.count for r in sends if r.dest.port == server.getsockname()[1])
    assert tcp >= 10  # every send counted (the big one may take several)


def test_first_send_record_matches_the_header() -> None:
    """struct svct_first = svct_event, data_len, pad, data[SVCT_DATA_LEN]: the size user
    space accepts follows bpf/svctrace.h, and a record decodes to its bytes exactly."""
    header = (Path(__file__).resolve().parents[1] / "bpf" / "svctrace.h").read_text()
    data_len = int(re.search(r"#define SVCT_DATA_LEN (\d+)", header)[1])
    assert "sizeof == 424" in header and _FIRST_SIZE == _EVENT.size + 8 + data_len == 424
    head = _record(2, 2, 1, bytes([127, 0, 0, 1]), dport=6379)
    raw = head + struct.pack("<II", 6, 0) + b"PING\r\n".ljust(data_len, b"\0")
    event = decode(raw)
    assert event.kind == "send" and event.dest.port == 6379
    assert event.first_bytes == b"PING\r\n"
