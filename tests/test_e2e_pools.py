"""A pool worker started lazily in one test runs what a later test submits (asgiref's
sync_to_async, asyncio's default executor): that later test is the one that needs the
service, not "a thread that outlived test one"."""
from __future__ import annotations

import pytest

from tests.support import e2e
from tests.support.backends import backend_marks

SUITE = '''\
import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

POOL = ThreadPoolExecutor(max_workers=1)  # started lazily, by the first submit
PORT = int(os.environ["POOLED_PORT"])


def _touch():
    with socket.create_connection(("127.0.0.1", PORT), timeout=5) as sock:
        sock.sendall(b"x")


def test_a_starts_the_pool():
    POOL.submit(lambda: None).result()


def test_b_submits_work():
    POOL.submit(_touch).result()


def test_c_leaks_a_plain_thread():
    stop = threading.Event()
    thread = threading.Thread(target=lambda: (stop.wait(5), _touch()), daemon=True)
    thread.start()
    globals()["LEAKED"] = (thread, stop)


def test_d_runs_while_the_leak_talks():
    LEAKED[1].set()
    LEAKED[0].join(5)
'''


@pytest.mark.parametrize("backend", [pytest.param(b, marks=backend_marks(b))
                                     for b in ("ebpf", "inprocess")])
def test_pool_work_belongs_to_the_submitting_test(tmp_path, backend):
    report, _ = e2e.run_one_file(tmp_path, "test_pool.py", SUITE, "pooled-svc",
                                 ["-b", backend], port_env="POOLED_PORT")
    tests = {k.split("::")[-1]: v for k, v in report["tests"].items()}
    assert tests["test_a_starts_the_pool"]["services"] == []
    assert tests["test_b_submits_work"]["services"] == ["pooled-svc"]
    first = tests["test_b_submits_work"]["evidence"]["pooled-svc"]["first"]
    assert first["born_in"] == "test_pool.py::test_a_starts_the_pool"
    # a plain thread leaked by test c still outlives it: not test d's need
    assert tests["test_d_runs_while_the_leak_talks"]["services"] == []
    outlived = [u for u in report["unattributed"] if u["reason"] == "outlived-test"]
    assert [u["detail"] for u in outlived] == \
        ["thread started in test_pool.py::test_c_leaks_a_plain_thread"]
