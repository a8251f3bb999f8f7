"""--stacks: py-spy output, frame marks, call sites, creation chains, resuming."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from svctrace.events import Destination, Event, Freeze, ProcessEvent, Stack
from svctrace.join.stacks import StackIndex, parse_dump
from svctrace.run.stacks import StackTaker, find_py_spy
from svctrace.views.stacks import call_site, stack_lines

_DUMP = [
    {"pid": 10, "thread_id": 1, "thread_name": "MainThread", "os_thread_id": 10,
     "frames": [
         {"name": "connect", "filename": "/v/lib/python3.11/site-packages/psycopg2/__init__.py",
          "line": 122},
         {"name": "on_order_saved", "filename": "/proj/app/orders/signals.py", "line": 42},
         {"name": "test_checkout", "filename": "/proj/tests/test_checkout.py", "line": 17},
         {"name": "pytest_pyfunc_call", "filename": "/v/lib/python3.11/site-packages/_pytest/"
                                                   "python.py", "line": 187}]},
    {"pid": 10, "thread_id": 2, "thread_name": "bg", "os_thread_id": 11, "frames": []},
]


def _frames(*spec):
    return [{"file": f, "line": n, "function": fn} for f, n, fn in spec]


def test_parse_dump_innermost_first_and_relative_to_the_run_folder():
    threads = parse_dump(json.dumps(_DUMP), "/proj")
    assert threads[0]["tid"] == 10 and threads[0]["name"] == "MainThread"
    assert [f["file"] for f in threads[0]["frames"]][1:3] == ["app/orders/signals.py",
                                                             "tests/test_checkout.py"]
    assert threads[1] == {"tid": 11, "name": "bg", "frames": []}


def test_call_site_is_the_projects_innermost_frame_called_from_the_test():
    index = StackIndex()
    index.add(Stack(500, 10, 10, "connect", threads=parse_dump(json.dumps(_DUMP), "/proj"),
                    held_ms=31.0))
    found = index.evidence(10, 10, 500, "MainThread", "tests/test_checkout.py")
    assert found["via"] == "contacting thread"
    assert found["call_site"] == {"file": "app/orders/signals.py", "line": 42,
                                  "function": "on_order_saved"}
    assert found["test_frame"]["line"] == 17
    marks = [f["mark"] for f in found["threads"][0]["frames"]]
    assert marks == ["library", "project", "test"]  # pytest's own frames below are cut
    assert call_site("postgres", found) == ("postgres: at app/orders/signals.py:42 in "
                                            "on_order_saved, called from "
                                            "tests/test_checkout.py:17 in test_checkout")
    assert "process stopped at the contact, held 31 ms" in stack_lines("postgres", found)[0]
    # another record of the same thread has no stack of its own
    assert index.evidence(10, 10, 501, "MainThread", None) is None


def test_a_c_thread_is_traced_to_the_python_stack_that_created_it():
    """rdk:broker-1 runs no Python; MainThread created rdk:main, rdk:main created the broker
    thread: the chain ends at the Python frames of the first creation."""
    index = StackIndex()
    main = ({"tid": 10, "name": "MainThread",
             "frames": _frames(("tests/test_k.py", 12, "test_k"))},)
    index.thread(ProcessEvent("thread", 100, None, 10, 10, "python", tid=20), 100)
    index.add(Stack(100, 10, 20, "thread", creator=10, threads=main))
    # rdk:main (20) creates two broker threads; only the first creation was stopped for
    index.thread(ProcessEvent("thread", 200, None, 10, 20, "rdk:main", tid=21), 200)
    index.thread(ProcessEvent("thread", 5_000_200, None, 10, 20, "rdk:main", tid=22),
                 5_000_200)
    index.add(Stack(200, 10, 21, "thread", creator=20, threads=main))
    index.add(Stack(9_000_000, 10, 22, "connect", threads=main))
    found = index.evidence(10, 22, 9_000_000, "rdk:broker-1", "tests/test_k.py")
    assert found["via"] == "thread creation"
    assert found["contacting_thread"] == "rdk:broker-1 runs no Python code"
    chain = found["created"]
    assert [(c["tid"], c["by_tid"]) for c in chain] == [(22, 20), (20, 10)]
    assert chain[0]["by_name"] == "rdk:main" and chain[0]["taken_ms_before"] == 5.0
    assert found["call_site"] == {"file": "tests/test_k.py", "line": 12, "function": "test_k"}
    assert call_site("kafka", found).startswith(
        "kafka: rdk:broker-1 runs no Python code; that thread was created (through 1 more thread "
        "creation) at tests/test_k.py:12 in test_k")


def test_no_creation_seen_says_why():
    index = StackIndex()
    index.add(Stack(300, 10, 30, "connect", threads=()))
    found = index.evidence(10, 30, 300, "rdk:broker-1", None)
    assert found["via"] == "none" and "creation was not seen" in found["why_not"]
    assert call_site("kafka", found).startswith("kafka: no call site: its creation")


def test_attribution_puts_the_stack_in_the_first_evidence():
    from svctrace.join.attribution import Attributor
    from svctrace.events import Marker
    from svctrace.join.services import ServiceMap
    att = Attributor(ServiceMap({}, [], True))
    att.add(Marker(100, 0, 10, None, "tests/test_checkout.py::test_checkout", "call", "start"))
    dest = Destination("inet", "tcp", "127.0.0.1", 5432)
    att.add(Event("connect", 500, None, 10, 10, "python", dest, -115))
    att.add(Stack(500, 10, 10, "connect", threads=parse_dump(json.dumps(_DUMP), "/proj")))
    att.add(Marker(900, 0, 10, None, "tests/test_checkout.py::test_checkout", "call", "end",
                   "passed"))
    result = att.finish()
    first = result.tests["tests/test_checkout.py::test_checkout"].phases["call"][
        "postgres"].first
    assert first["stack"]["call_site"]["line"] == 42


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/status") as fh:
        return next(line.split()[1] for line in fh if line.startswith("State:"))


def _wait_state(pid: int, states: str) -> str:
    """The process's state once it is one of `states` (a signal is delivered
    asynchronously), or the last one seen after 10 s."""
    deadline = time.monotonic() + 10
    while (state := _state(pid)) not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    return state


@pytest.mark.parametrize("py_spy", ["real", "missing"])
def test_a_stopped_process_is_resumed_whatever_the_dump_does(py_spy):
    if py_spy == "real" and find_py_spy() is None:
        pytest.skip("py-spy is not installed (pip install py-spy)")
    # It says when its interpreter runs: a dump of a process still starting finds no frame.
    proc = subprocess.Popen([sys.executable, "-c",
                             "import time; print('ready', flush=True); time.sleep(30)"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGSTOP)
        assert _wait_state(proc.pid, "T") == "T"
        taker = StackTaker(lambda kind, dest: "redis",
                           py_spy=None if py_spy == "real" else "/nonexistent/py-spy")
        dest = Destination("inet", "tcp", "127.0.0.1", 6379)
        stack = taker.take(Freeze(time.monotonic_ns(), proc.pid, proc.pid, "python",
                                  "connect", dest, 0, 1))
        assert _wait_state(proc.pid, "SR") in ("S", "R")
        if py_spy == "real":
            assert stack.error == "" and stack.threads[0]["frames"][0]["line"] == 1
        else:
            assert "could not run" in stack.error
        # the same (process, service, epoch) again: resumed, not dumped
        proc.send_signal(signal.SIGSTOP)
        assert taker.take(Freeze(time.monotonic_ns(), proc.pid, proc.pid, "python",
                                 "connect", dest, 0, 1)) is None
        assert _wait_state(proc.pid, "SR") in ("S", "R")
    finally:
        proc.kill()
        proc.wait()


def test_a_process_gone_mid_dump_is_an_error_not_a_hang():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    taker = StackTaker(lambda kind, dest: "redis")
    if taker.py_spy is None:
        pytest.skip("py-spy is not installed (pip install py-spy)")
    stack = taker.take(Freeze(time.monotonic_ns(), proc.pid, proc.pid, "python", "connect",
                              Destination("inet", "tcp", "127.0.0.1", 6379), 0, 1))
    assert stack.error and stack.threads == ()
    assert taker.stats()["failed_dumps"] == 1


def test_noise_is_resumed_without_a_dump():
    taker = StackTaker(lambda kind, dest: None, py_spy="/nonexistent/py-spy")
    assert taker.take(Freeze(1, 999999, 999999, "x", "connect",
                             Destination("unix", "unix", "/var/run/nscd/socket"))) is None
    assert taker.stats()["dumps"] == 0 and taker.stats()["stops"] == 1
