"""Observer effect: a librdkafka client created and destroyed within a few ms.

librdkafka's broker thread connects to the bootstrap broker right after the client is
created; a test that destroys the client at once races that connect. A tracer that slows
the client's threads (strace stops them on every traced system call, not only on the ones
attribution needs) lets the destroy win, and the connect a plain run makes never happens:
kafka vanishes from the test. eBPF changes no timing that matters here.

strace 6.1 under --seccomp-bpf resumes a new thread or process with PTRACE_SYSCALL: it
stops on every system call until its first traced one, so librdkafka's threads (rdk:main
for its whole life) ran at ptrace speed. The backend now traces set_robust_list, glibc's
first call in a new thread and in a fork child, and no longer close/dup/fcntl/prctl/write.
Measured (8 clients per run, `poll(0)` between create and destroy): eBPF saw 7-8 connects
of 8, strace 1-6 before, 2-7 after: the at-once case is still racy under strace; with a
few ms of life all see 8 of 8 (the tests below).
"""
from __future__ import annotations

import json
import subprocess
import sys

from svctrace.capture.base import RunContext
from svctrace.capture.strace import StraceBackend
from tests.support import e2e
from tests.support.backends import needs_backend as needs

SHORT_LIVED = '''\
import os

import pytest
from confluent_kafka import Producer


@pytest.mark.parametrize("n", range(8))
def test_short_lived_producer(n):
    producer = Producer({"bootstrap.servers": os.environ["SVCTRACE_KAFKA_BOOTSTRAP"],
                         "socket.connection.setup.timeout.ms": 1000})
    producer.poll(0.005)  # a few ms of life: long enough for the broker thread's connect
    del producer           # rd_kafka_destroy
'''


def _suite(tmp_path, env):
    root = tmp_path / "short"
    root.mkdir()
    (root / "pyproject.toml").write_text(env["_PYPROJECT"])
    (root / "test_short.py").write_text(SHORT_LIVED)
    return root


def _kafka_tests(report: dict) -> set[str]:
    return {nodeid for nodeid, test in report["tests"].items()
            if "kafka" in test.get("services", [])}


@needs("ebpf")
def test_ebpf_sees_the_short_lived_clients_connect(tmp_path, sample_env):
    report, proc = e2e.run_svctrace("ebpf", _suite(tmp_path, sample_env), sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_kafka_tests(report)) == 8


@needs("strace")
def test_strace_sees_the_short_lived_clients_connect(tmp_path, sample_env):
    report, proc = e2e.run_svctrace("strace", _suite(tmp_path, sample_env), sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_kafka_tests(report)) == 8


CALLS = r"""
import json, os, threading, time
def per_call():
    t0 = time.perf_counter()
    for _ in range(2000):
        os.getppid()
    return (time.perf_counter() - t0) * 1e6 / 2000
out = {"main": per_call()}
t = threading.Thread(target=lambda: out.__setitem__("thread", per_call()))
t.start(); t.join()
r, w = os.pipe()
if os.fork() == 0:
    os.write(w, json.dumps(per_call()).encode()); os._exit(0)
os.wait()
out["child"] = json.loads(os.read(r, 100))
print(json.dumps(out))
"""


@needs("strace")
def test_new_threads_and_processes_are_not_stopped_on_every_system_call():
    backend = StraceBackend()
    backend.prepare(RunContext(command=[]))
    proc = subprocess.Popen(backend.wrap_command([sys.executable, "-c", CALLS]),
                            stdout=subprocess.PIPE, text=True)
    backend.child_started(proc.pid)
    out, _ = proc.communicate(timeout=120)
    backend.stop()
    us = json.loads(out)
    # untraced ~0.3 us a call; a ptrace stop per call ~15-20 us (50x)
    assert us["thread"] < 5 * us["main"] + 1, us
    assert us["child"] < 5 * us["main"] + 1, us
