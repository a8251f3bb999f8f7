"""StraceBackend driven through the Backend API on real programs (needs strace and ptrace)."""
from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
import time

import pytest

from svctrace.capture.base import RunContext
from svctrace.capture.strace import StraceBackend
from svctrace.events import Destination, Event, ProcessEvent
from tests.support.backends import backend_marks

pytestmark = backend_marks("strace")

PROGRAM = r"""
import json, os, socket, sys, threading, time
tcp_port, tcp6_port, refused_port, udp_port, path, abstract = json.loads(sys.argv[1])
ops = {}
def op(name, fn):
    t0 = time.time_ns(); fn(); ops[name] = (t0, time.time_ns())
c = socket.socket()
op("tcp_connect", lambda: c.connect(("127.0.0.1", tcp_port)))
op("tcp_send", lambda: c.sendall(b"hello"))
r = socket.socket()
op("refused", lambda: r.connect_ex(("127.0.0.1", refused_port)))
c6 = socket.socket(socket.AF_INET6)
op("tcp6_connect", lambda: c6.connect(("::1", tcp6_port)))
op("tcp6_send", lambda: c6.send(b"v6"))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
op("udp_sendto", lambda: u.sendto(b"statsd", ("127.0.0.1", udp_port)))
un = socket.socket(socket.AF_UNIX)
op("unix_connect", lambda: un.connect(path))
op("unix_send", lambda: un.send(b"unix"))
ab = socket.socket(socket.AF_UNIX)
op("abstract_connect", lambda: ab.connect("\0" + abstract))
op("abstract_send", lambda: ab.send(b"abs"))
dup = socket.socket(fileno=os.dup(un.fileno()))
op("dup_send", lambda: dup.send(b"dup"))
op("write_send", lambda: os.write(un.fileno(), b"write"))
def fork_send():
    t0 = time.time_ns()
    pid = os.fork()
    if pid == 0:
        un.send(b"child"); os._exit(0)
    os.waitpid(pid, 0)
    ops["fork_send"] = (t0, time.time_ns(), pid)
fork_send()
tids = []
def in_thread():
    tids.append(threading.get_native_id()); ab.send(b"thread")
t = threading.Thread(target=in_thread)
op("thread_send", lambda: (t.start(), t.join()))
print(json.dumps({"pid": os.getpid(), "uid": os.getuid(), "ops": ops, "thread": tids[0]}),
      flush=True)
sys.stdin.read()  # wait until the test has seen our events stream in
"""


@pytest.fixture
def listeners(tmp_path):
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    path = str(tmp_path / "svc.sock")
    un = socket.socket(socket.AF_UNIX)
    un.bind(path)
    un.listen()
    abstract = f"svctrace-test-{os.getpid()}"
    ab = socket.socket(socket.AF_UNIX)
    ab.bind("\0" + abstract)
    ab.listen()
    socks = [tcp, tcp6, refused, udp, un, ab]
    yield (tcp.getsockname()[1], tcp6.getsockname()[1], refused.getsockname()[1],
           udp.getsockname()[1], path, abstract)
    for s in socks:
        s.close()


def run_traced(backend: StraceBackend, argv: list[str], until_stdout: bool = True):
    """Run argv under the backend as the runner does; return (records, program output,
    records that poll() delivered while the program was still running)."""
    wrapped = backend.wrap_command(argv)
    proc = subprocess.Popen(wrapped, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    backend.child_started(proc.pid)
    records: list = []
    output = proc.stdout.readline() if until_stdout else ""
    deadline = time.monotonic() + 30
    # The program blocks on stdin after printing: events must stream in before it exits.
    while time.monotonic() < deadline and not any(
            isinstance(r, Event) and r.tid != r.pid for r in records):
        records += backend.poll()
        time.sleep(0.02)
    streamed = list(records)
    proc.stdin.close()
    while proc.poll() is None:
        records += backend.poll()
        time.sleep(0.02)
    records += backend.stop()
    return records, output, streamed


@pytest.mark.parametrize("writes", [False, True], ids=["default", "strace_writes"])
def test_real_run_reports_exact_events(listeners, writes):
    tcp_port, tcp6_port, refused_port, udp_port, path, abstract = listeners
    backend = StraceBackend()
    backend.prepare(RunContext(command=[], settings={"strace_writes": writes}))
    tmpdir = os.path.dirname(backend._fifo)
    assert stat.S_IMODE(os.stat(tmpdir).st_mode) == 0o700
    assert stat.S_ISFIFO(os.stat(backend._fifo).st_mode)
    assert stat.S_IMODE(os.stat(backend._fifo).st_mode) == 0o600
    before = time.time_ns()
    records, output, streamed = run_traced(
        backend, [sys.executable, "-c", PROGRAM, json.dumps(listeners)])
    after = time.time_ns()
    assert not os.path.exists(tmpdir)
    info = json.loads(output)
    pid, ops, thread = info["pid"], info["ops"], info["thread"]
    child = ops["fork_send"][2]
    assert streamed, "poll() returned nothing while the traced program was running"

    def dest(kind: str, addr: str, port: int | None = None) -> Destination:
        family = {"tcp": "inet", "tcp6": "inet6", "udp": "inet", "unix": "unix"}[kind]
        transport = "tcp" if kind == "tcp6" else kind
        return Destination(family, transport, addr, port)

    got = [(e.kind, e.pid, e.tid, e.dest, e.result) for e in records if isinstance(e, Event)]
    expected = [
        ("connect", pid, pid, dest("tcp", "127.0.0.1", tcp_port), 0),
        ("send", pid, pid, dest("tcp", "127.0.0.1", tcp_port), 5),
        ("connect", pid, pid, dest("tcp", "127.0.0.1", refused_port), -111),
        ("connect", pid, pid, dest("tcp6", "::1", tcp6_port), 0),
        ("send", pid, pid, dest("tcp6", "::1", tcp6_port), 2),
        ("send", pid, pid, dest("udp", "127.0.0.1", udp_port), 6),
        ("connect", pid, pid, dest("unix", path), 0),
        ("send", pid, pid, dest("unix", path), 4),
        ("connect", pid, pid, dest("unix", "@" + abstract), 0),
        ("send", pid, pid, dest("unix", "@" + abstract), 3),
        ("send", pid, pid, dest("unix", path), 3),                  # on a dup
        ("send", pid, pid, dest("unix", path), 5),                  # os.write()
        ("send", child, child, dest("unix", path), 5),              # forked child
        ("send", pid, thread, dest("unix", "@" + abstract), 6),     # thread
    ]
    names = ["tcp_connect", "tcp_send", "refused", "tcp6_connect", "tcp6_send",
             "udp_sendto", "unix_connect", "unix_send", "abstract_connect",
             "abstract_send", "dup_send", "write_send", "fork_send", "thread_send"]
    if not writes:  # write() is not traced by default, and the report says so
        del expected[11], names[11]
        assert any("write()" in spot for spot in backend.blind_spots)
    else:
        assert not any("write()" in spot for spot in backend.blind_spots)
    assert got == expected
    for event, name in zip([e for e in records if isinstance(e, Event)], names):
        t0, t1 = ops[name][:2]
        assert t0 <= event.wall_ns <= t1, (name, t0, event.wall_ns, t1)
        assert event.mono_ns is None and event.comm == "python"[:len(event.comm)]
    send_local = [e.local_port for e in records if isinstance(e, Event)][1]
    assert send_local and send_local != tcp_port  # client's ephemeral port

    lifecycle = [(p.kind, p.pid, p.ppid) for p in records if isinstance(p, ProcessEvent)]
    assert lifecycle[0] == ("fork", pid, lifecycle[0][2])  # the command, child of strace
    assert lifecycle[1][:2] == ("exec", pid)
    assert ("fork", child, pid) in lifecycle and ("exit", child, pid) in lifecycle
    assert lifecycle[-1][:2] == ("exit", pid)
    for p in records:
        assert before <= p.wall_ns <= after

    stats = backend.stats()
    assert stats["events"] == len(records) and stats["lost_events"] == 0
    assert stats["lines"] > len(records) and stats["unparsed_lines"] == 0
    assert isinstance(stats["seccomp_bpf"], bool)


def test_wrap_command_flags_and_run_as_user():
    backend = StraceBackend()
    user = "nobody"
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        pytest.skip("no 'nobody' user to run the command as")
    if os.geteuid() != 0:
        pytest.skip("running the command as another user needs root")
    backend.prepare(RunContext(command=[], run_uid=uid))  # no name: looked up from the uid
    argv = backend.wrap_command(["prog", "arg"])
    assert argv[-3:] == ["--", "prog", "arg"]
    assert argv[argv.index("-u") + 1] == user
    for flag in ("-f", "-yy", "-o"):
        assert flag in argv
    assert "--seccomp-bpf" in argv if backend.stats()["seccomp_bpf"] else True
    backend.stop()  # never started: cleans up all the same

    # The command must be runnable by that user: the venv may live under a 0700 /root.
    python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3")
                   if os.access(p, os.X_OK)), None)
    if python is None:
        pytest.skip("no system python3 that another user can run")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    backend = StraceBackend()
    backend.prepare(RunContext(command=[], run_uid=uid, run_user=user))
    program = ("import os, socket, sys; print(os.getuid(), flush=True); "
               f"socket.create_connection(('127.0.0.1', {port})).send(b'x'); "
               "sys.stdin.read()")
    records, output, _ = run_traced_until_send(backend, [python, "-c", program])
    server.close()
    assert output and int(output) == uid
    sends = [e for e in records if isinstance(e, Event) and e.kind == "send"]
    assert [(e.dest.port, e.result) for e in sends] == [(port, 1)]


def run_traced_until_send(backend: StraceBackend, argv: list[str]):
    wrapped = backend.wrap_command(argv)
    proc = subprocess.Popen(wrapped, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd="/")
    backend.child_started(proc.pid)
    output = proc.stdout.readline()
    records: list = []
    deadline = time.monotonic() + (30 if output else 0)
    while time.monotonic() < deadline and not any(
            isinstance(r, Event) and r.kind == "send" for r in records):
        records += backend.poll()
        time.sleep(0.02)
    proc.stdin.close()
    proc.wait()
    records += backend.stop()
    return records, output, None


def test_unavailable_reason_is_none_here():
    assert StraceBackend.unavailable_reason() is None
    assert StraceBackend.name == "strace" and StraceBackend.clock == "wall"
    assert StraceBackend.blind_spots


WRITES_SUITE = '''
import os, socket

# opened at import (collection): only the test's write() on it can put it in the test
CONN = socket.create_connection(("127.0.0.1", int(os.environ["SERVICE_PORT"])))

def test_writes_on_an_open_connection():
    assert os.write(CONN.fileno(), b"ping") == 4
'''


@pytest.mark.parametrize("config", ["", "strace_writes = true"], ids=["default", "writes"])
def test_strace_writes_in_pyproject_reaches_the_backend(tmp_path, config):
    """`svctrace run`: write() sends are a named blind spot by default, seen when asked."""
    from tests.support.e2e import run_one_file
    report, _ = run_one_file(tmp_path, "test_w.py", WRITES_SUITE, "web", ["-b", "strace"],
                             config=config)
    test = report["tests"]["test_w.py::test_writes_on_an_open_connection"]
    writes_blind = any("write()/writev()" in spot for spot in report["run"]["blind_spots"])
    if config:
        assert test["phases"]["call"] == ["web"] and not writes_blind
    else:
        assert test["phases"]["call"] == [] and writes_blind


CLIENTS = """
import sys, psycopg2, redis
redis.Redis.from_url(sys.argv[1]).ping()
psycopg2.connect(sys.argv[2]).close()
print("done", flush=True)
sys.stdin.read()
"""


def test_first_sends_carry_the_bytes_strace_printed(services):
    """libpq and redis-py through strace: each connection's first send carries what strace
    printed of it (-s), and the protocols are recognised from it."""
    from svctrace.join.protocols import recognise
    backend = StraceBackend()
    backend.prepare(RunContext(command=[]))
    dsn = services["pg_dsn"].replace("@127.0.0.1:", "@127.0.0.1:") + "?sslmode=disable"
    records, output, _ = run_traced(backend, [sys.executable, "-c", CLIENTS,
                                              services["redis_url"], dsn])
    assert output.strip() == "done"
    firsts = {r.dest.port: r.first_bytes for r in records
              if isinstance(r, Event) and r.kind == "send" and r.first_bytes}
    assert recognise(firsts[services["redis_port"]]).protocol == "redis"
    assert recognise(firsts[services["pg_port"]]).source == "a StartupMessage"
    later = [r for r in records if isinstance(r, Event) and r.kind == "send"
             and r.dest.port == services["redis_port"] and r.first_bytes is None]
    assert later, "redis-py's later sends carry no bytes"
