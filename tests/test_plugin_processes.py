"""Which pytest processes write to the run's pipe: the owner and its xdist workers, no other."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from pytest_svctrace.sinks import MemorySink, PipeSink
from svctrace.capture import wire
from svctrace.events import Marker
from tests.support.backends import backend_marks
from tests.support.e2e import SVCTRACE

INNER = '''
import socket
def test_inner():
    socket.create_connection(("127.0.0.1", {port})).close()
'''

OUTER = '''
import subprocess, sys

INNER = {inner!r}

def _inner(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)]

def test_runs_pytest(tmp_path):
    proc = subprocess.run(_inner(tmp_path), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

def test_runs_pytest_with_xdist(tmp_path):
    proc = subprocess.run(_inner(tmp_path) + ["-n", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr

def test_runs_pytester_subprocess(pytester):
    pytester.makepyfile(test_inner=INNER)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
'''


def _svctrace_run(pytester, backend: str, *pytest_args: str) -> dict:
    proc = subprocess.run(SVCTRACE + ["run", "-b", backend, "-o", "r.json", "--progress", "0",
                                      "--", sys.executable, "-m", "pytest", "-q", "-p",
                                      "no:cacheprovider", *pytest_args],
                          cwd=pytester.path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((pytester.path / "r.json").read_text())


@pytest.fixture
def web(pytester, http_url) -> str:
    """The port of a real HTTP listener on 127.0.0.1, named "web" in the suite's config."""
    port = http_url.rsplit(":", 1)[1].strip("/")
    pytester.makefile(".toml", pyproject=f'[tool.svctrace.services]\nweb = ["127.0.0.1:{port}"]\n')
    return port


@pytest.mark.parametrize("backend", [pytest.param(b, marks=backend_marks(b))
                                     for b in ("inprocess", "strace")])
def test_a_pytest_started_by_a_test_leaves_the_pipe_to_that_test(pytester, web, backend):
    """Its node ids are not the run's; its traffic is the outer test's (process tree)."""
    pytester.makepyfile(test_outer=OUTER.format(inner=INNER.format(port=web)))
    report = _svctrace_run(pytester, backend, "-p", "pytester", "test_outer.py")
    assert {nodeid: test["phases"]["call"] for nodeid, test in report["tests"].items()} == {
        "test_outer.py::test_runs_pytest": ["web"],
        "test_outer.py::test_runs_pytest_with_xdist": ["web"],
        "test_outer.py::test_runs_pytester_subprocess": ["web"]}


def test_xdist_workers_of_the_run_write_markers(pytester, web):
    pytester.makepyfile(test_work='''
import socket, pytest
@pytest.mark.parametrize("n", range(4))
def test_web(n):
    socket.create_connection(("127.0.0.1", {port})).close()
'''.format(port=web))
    report = _svctrace_run(pytester, "inprocess", "-n", "2", "test_work.py")
    assert {nodeid: test["services"] for nodeid, test in report["tests"].items()} == {
        f"test_work.py::test_web[{n}]": ["web"] for n in range(4)}
    assert {test["worker"] for test in report["tests"].values()} == {"gw0", "gw1"}


def _fork_while_locked(sink, in_child) -> int:
    """Fork while another thread holds the sink's lock; the child runs in_child(). Its exit
    status, or -1 when it hung (killed after 10 s)."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with sink._lock:
            holding.set()
            release.wait(10)
    thread = threading.Thread(target=hold)
    thread.start()
    assert holding.wait(10)
    pid = os.fork()
    if pid == 0:
        try:
            in_child()
        finally:
            os._exit(0 if sys.exc_info()[0] is None else 1)
    release.set()
    thread.join()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -1


def test_a_forked_child_gets_a_fresh_pipe_sink(tmp_path):
    fifo = tmp_path / "markers"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    sink = PipeSink(str(fifo))
    marker = Marker(1, 2, 0, None, "t.py::t", "call", "start")
    assert _fork_while_locked(sink, lambda: (sink(marker), sink.flush())) == 0
    assert list(wire.Decoder().feed(os.read(reader, 1 << 16))) == [marker]
    os.close(reader)
    sink.close()


def test_a_forked_child_gets_a_fresh_memory_sink():
    sink = MemorySink()
    assert _fork_while_locked(sink, lambda: (sink.flush(), sink.lines())) == 0
