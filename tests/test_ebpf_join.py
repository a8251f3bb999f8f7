"""The join in the kernel (kernel_join) against real processes: which writes are markers,
whose epoch folds a process's records, and connects folded like sends."""
from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from svctrace.capture.base import RunContext
from svctrace.capture.ebpf import EbpfBackend
from svctrace.events import Event
from tests.support.backends import backend_marks
from tests.support.traced import traced_fork_then_stop

pytestmark = backend_marks("ebpf")
MARKER = b'\x1e["m"]\n'  # what a plugin marker line starts with


@pytest.fixture
def pipe(tmp_path: Path):
    """A marker FIFO with a reader, as the runner makes one (run/markerpipe.py)."""
    path = str(tmp_path / "markers")
    os.mkfifo(path, 0o600)
    rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    yield path
    os.close(rfd)


def _tracer(pipe: str | None, join: bool = True) -> EbpfBackend:
    tracer = EbpfBackend()
    tracer.prepare(RunContext(command=["test"], settings={"kernel_join": join},
                              marker_pipe=pipe))
    return tracer


def _write_marker(path: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    os.write(fd, MARKER)
    os.close(fd)


def _run(tracer: EbpfBackend, work) -> list:
    """Every record of a traced child, folded tails drained by stop() included."""
    return traced_fork_then_stop(tracer, work)[1]


def _events(records: list, kind: str, port: int | None = None) -> list[Event]:
    return sorted((r for r in records if isinstance(r, Event) and r.kind == kind
                   and (port is None or r.dest.port == port)), key=lambda r: r.mono_ns)


def _udp_sink() -> socket.socket:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    return sink


def test_the_kernel_learns_the_marker_pipe(pipe):
    tracer = _tracer(pipe)
    try:
        found = tracer._bpf["marker_pipe"][0]
        assert found.ino == os.stat(pipe).st_ino and found.calibrate == 0
        assert tracer.notes() == []
    finally:
        tracer.stop()


@pytest.mark.parametrize("join", [True, False])
def test_a_marker_looking_write_elsewhere_does_not_split_a_fold(pipe, join):
    """sender.c's "unfold" mode: RS "[" written to /dev/null. With the join only the
    marker pipe ends an epoch; without it, any such write does."""
    sink = _udp_sink()

    def work():
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.connect(sink.getsockname())
        null = os.open(os.devnull, os.O_WRONLY)
        for _ in range(100):
            out.send(b"x")
            os.write(null, MARKER)
        _write_marker(pipe)
        out.send(b"y")

    records = _run(_tracer(pipe, join), work)
    counts = [r.count for r in _events(records, "send", sink.getsockname()[1])]
    assert sum(counts) == 101
    assert counts == ([1, 99, 1] if join else [1] * 101)


def test_each_owner_has_its_own_epoch(pipe):
    """Two marker writers (xdist workers): one's marker ends only its own folds, and its
    fork children's; a process with no owner yet folds by the global epoch."""
    sink = _udp_sink()
    port = sink.getsockname()[1]
    child_done, child_go, b_done, b_go = os.pipe(), os.pipe(), os.pipe(), os.pipe()

    def worker_a():  # marks, forks a child that sends, marks again between its sends
        _write_marker(pipe)
        child = os.fork()
        if child == 0:
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out.connect(sink.getsockname())
            for _ in range(50):
                out.send(b"c")
            os.write(child_done[1], b".")
            os.read(child_go[0], 1)
            for _ in range(50):
                out.send(b"c")
            os._exit(0)
        os.read(child_done[0], 1)
        _write_marker(pipe)  # the child's epoch moves on
        os.write(child_go[1], b".")
        os.waitpid(child, 0)
        os.read(b_done[0], 1)  # worker b is done with its first half
        _write_marker(pipe)  # not b's owner: b's folds go on
        os.write(b_go[1], b".")

    def worker_b():
        _write_marker(pipe)
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.connect(sink.getsockname())
        for _ in range(50):
            out.send(b"b")
        os.write(b_done[1], b".")
        os.read(b_go[0], 1)
        for _ in range(50):
            out.send(b"b")

    def work():
        b = os.fork()
        if b == 0:
            try:
                worker_b()
            finally:
                os._exit(0)
        worker_a()
        os.waitpid(b, 0)

    records = _run(_tracer(pipe), work)
    by_pid: dict[int, list[int]] = {}
    for send in _events(records, "send", port):
        by_pid.setdefault(send.pid, []).append(send.count)
    assert sorted(by_pid.values()) == [[1, 49, 1, 49], [1, 99]]


def test_connects_fold_per_thread_destination_and_result(pipe):
    """A storm of short connections: one record and one tail per destination and result
    within an epoch, counts exact; a refused non-blocking connect keeps its late result."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    ok_port, refused_port = listener.getsockname()[1], closed.getsockname()[1]

    def work():
        for _ in range(300):
            with socket.create_connection(("127.0.0.1", ok_port)):
                pass
        for _ in range(20):
            sock = socket.socket()
            assert sock.connect_ex(("127.0.0.1", refused_port)) == 111
            sock.close()
        for _ in range(20):
            sock = socket.socket()
            sock.setblocking(False)
            assert sock.connect_ex(("127.0.0.1", refused_port)) in (111, 115)
            sock.close()
        _write_marker(pipe)
        with socket.create_connection(("127.0.0.1", ok_port)):
            pass

    tracer = _tracer(pipe)
    records = _run(tracer, work)
    ok = _events(records, "connect", ok_port)
    assert [(r.count, r.result) for r in ok] == [(1, 0), (299, 0), (1, 0)]
    refused = _events(records, "connect", refused_port)
    late = _events(records, "connect_result", refused_port)
    attempts = sum(r.count for r in refused)
    failures = sum(r.count for r in refused if r.result == -111) + len(late)
    assert attempts == 40 and failures == 40
    assert len(refused) <= 4  # blocking: first + tail; non-blocking: first (+ late) + tail
    stats = tracer.stats()
    assert stats["lost_events"] == 0 and stats["evicted_connects"] == 0


def test_without_the_join_every_connect_is_a_record(pipe):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]

    def work():
        for _ in range(100):
            with socket.create_connection(("127.0.0.1", port)):
                pass

    records = _run(_tracer(pipe, join=False), work)
    assert [r.count for r in _events(records, "connect", port)] == [1] * 100


def test_new_connections_that_send_the_same_first_bytes_fold_and_are_counted(pipe):
    """One request per connection: later sockets' sends to a destination fold into the
    first socket's record while their first bytes are the same; user space gets one
    record with those bytes standing for every such connection. Other bytes (another
    Host) are a record of their own, with their bytes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    port = listener.getsockname()[1]
    same = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
    other = b"GET / HTTP/1.1\r\nHost: b.example\r\n\r\n"

    def work():
        for data in [same] * 200 + [other] + [same] * 50:
            with socket.socket() as sock:
                sock.connect(("127.0.0.1", port))
                sock.sendall(data)
                sock.sendall(b"more")

    tracer = _tracer(pipe)
    records = _run(tracer, work)
    sends = _events(records, "send", port)
    assert sum(r.count for r in sends) == 502
    with_bytes = {}
    for r in sends:
        if r.first_bytes is not None:
            with_bytes[r.first_bytes] = with_bytes.get(r.first_bytes, 0) + r.count
    assert with_bytes == {same: 250, other: 1}
    assert len([r for r in records if isinstance(r, Event)]) < 20
    assert tracer.stats()["lost_events"] == 0


def test_a_child_forked_before_its_parent_became_an_owner_folds_by_every_marker(pipe):
    """An xdist worker (forked by the main pytest process, which writes markers) that
    forks a helper before its own first marker write: the helper inherited the main
    process as owner, but its records belong to the worker's tests. Once the worker
    writes markers the main process is "split" and the helper folds by every marker
    write, as before the join."""
    sink = _udp_sink()
    port = sink.getsockname()[1]
    helper_done, helper_go = os.pipe(), os.pipe()

    def worker():
        helper = os.fork()
        if helper == 0:
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            out.connect(sink.getsockname())
            for _ in range(50):
                out.send(b"h")
            os.write(helper_done[1], b".")
            os.read(helper_go[0], 1)
            for _ in range(50):
                out.send(b"h")
            os._exit(0)
        os.read(helper_done[0], 1)
        _write_marker(pipe)  # the worker's first marker: a phase edge of the helper's
        os.write(helper_go[1], b".")
        os.waitpid(helper, 0)

    def work():
        _write_marker(pipe)  # the main process owns what it forks
        w = os.fork()
        if w == 0:
            try:
                worker()
            finally:
                os._exit(0)
        os.waitpid(w, 0)

    records = _run(_tracer(pipe), work)
    assert [r.count for r in _events(records, "send", port)] == [1, 49, 1, 49]
