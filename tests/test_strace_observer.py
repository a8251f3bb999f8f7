"""strace must not change what it measures (issue 13).

strace 6.1 under --seccomp-bpf resumes a new thread or process with PTRACE_SYSCALL: it
stops on every system call until its first traced one. librdkafka's broker threads were
slowed so that a client destroyed within a few ms lost its connect (and every thread that
never connects, rdk:main included, ran at ptrace speed for its whole life). The backend
now traces set_robust_list, glibc's first call in a new thread and in a fork child.

Measured here (8 clients per run, `poll(0)` between create and destroy, under `svctrace
run`): eBPF saw 7-8 connects of 8, strace 1-6 before, 2-7 after; with `poll(0.001)` all
three see 8 of 8. The at-once case is still racy under strace; the test below uses the
1 ms lifetime, which did not reproduce a miss here before or after.
"""
from __future__ import annotations

import json
import subprocess
import sys

from svctrace.backends.base import RunContext
from svctrace.backends.strace import StraceBackend
from tests.support.backends import needs_backend
from tests.support.e2e import run_one_file

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


@needs_backend("strace")
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


CLIENTS = 8
SHORT_LIVED = f'''\
import os

import pytest
from confluent_kafka import Producer


@pytest.mark.parametrize("n", range({CLIENTS}))
def test_short_lived_producer(n):
    producer = Producer({{"bootstrap.servers": "127.0.0.1:" + os.environ["KAFKA_PORT"]}})
    producer.produce("t", b"x")
    producer.poll(0.001)  # about 1 ms of life
    del producer          # rd_kafka_destroy
'''


def _kafka_tests(tmp_path, backend: str) -> int:
    report, _ = run_one_file(tmp_path, "test_short.py", SHORT_LIVED, "kafka",
                             ["--backend", backend], port_env="KAFKA_PORT")
    assert len(report["tests"]) == CLIENTS
    return sum("kafka" in test["phases"]["call"] for test in report["tests"].values())


@needs_backend("strace")
def test_strace_sees_short_lived_librdkafka_clients_connect(tmp_path):
    assert _kafka_tests(tmp_path, "strace") == CLIENTS


@needs_backend("ebpf")
def test_ebpf_sees_them_too(tmp_path):
    """The yardstick: without an observer effect the clients do connect."""
    assert _kafka_tests(tmp_path, "ebpf") == CLIENTS
