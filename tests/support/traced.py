"""A forked child traced by an eBPF backend from its first instruction on (the tests that
drive the backend directly, without `svctrace run`)."""
from __future__ import annotations

import os
import time

from svctrace.events import ProcessEvent


def records_until_exit(backend, pid: int) -> list:
    """Poll until the exit of pid has come through the ring buffer (5 s at most)."""
    records, deadline = [], time.monotonic() + 5
    while time.monotonic() < deadline:
        records += backend.poll()
        if any(isinstance(r, ProcessEvent) and r.kind == "exit" and r.pid == pid
               for r in records):
            break
        time.sleep(0.02)
    return records


def traced_fork(backend, work) -> tuple[int, list]:
    """Fork a child that runs work() once the backend traces it; wait for it (it must
    succeed); its pid and the records up to its exit."""
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.read(go_r, 1)
            work()
            code = 0
        finally:
            os._exit(code)
    backend.child_started(pid)
    os.write(go_w, b"x")
    _, status = os.waitpid(pid, 0)
    assert status == 0
    return pid, records_until_exit(backend, pid)


def traced_fork_then_stop(backend, work) -> tuple[int, list]:
    """traced_fork plus what stop() drains at the end (folded tails); stopped on every
    path."""
    try:
        pid, records = traced_fork(backend, work)
        return pid, records + backend.stop()
    finally:
        backend.stop()
