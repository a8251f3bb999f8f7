"""End to end: a one-page eBPF ring buffer overflows for real while one test floods it;
the records lost are charged to that test alone, which is marked incomplete, and
`svctrace tiers` runs it in the most complete tier. A run that loses nothing has no new
keys."""
from __future__ import annotations

import subprocess

from tests.support import e2e
from tests.support.backends import needs_backend

SUITE = '''
import os
import socket

PORT = int(os.environ["SERVICE_PORT"])


def test_a_quiet_contact():
    with socket.create_connection(("127.0.0.1", PORT)) as sock:
        sock.sendall(b"ping")


def test_b_quiet_nothing():
    pass


def test_flood():
    # short-lived UDP sockets to distinct ports: each send is a socket's first, a record
    # the kernel cannot fold; thousands of them between two polls overflow one page
    for i in range(4000):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"x", ("127.0.0.1", 20000 + i))


def test_z_idle_after_the_flood():
    pass
'''
# the flood's ports are ignored: its observed needs alone would put it in the bare tier
CONFIG = '''ignore = ["20000-29999/udp"]
RINGBUF
[[tool.svctrace.tiers]]
name = "bare"
services = []
startup_s = 0
[[tool.svctrace.tiers]]
name = "full"
services = ["svc"]
startup_s = 10
'''
QUIET = ("test_loss.py::test_a_quiet_contact", "test_loss.py::test_b_quiet_nothing",
         "test_loss.py::test_z_idle_after_the_flood")
FLOOD = "test_loss.py::test_flood"


def _tiers(tmp_path):
    return subprocess.run([*e2e.SVCTRACE, "tiers", "r.json", "--plan-out", "plan.json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@needs_backend("ebpf")
def test_a_flooding_test_loses_records_and_only_it_is_incomplete(tmp_path):
    report, proc = e2e.run_one_file(tmp_path, "test_loss.py", SUITE, "svc",
                                    ["--backend", "ebpf"],
                                    config=CONFIG.replace("RINGBUF", "ringbuf_pages = 1"))
    run, tests = report["run"], report["tests"]
    flood = tests[FLOOD]
    assert run["lost_events"] > 0, "one page did not overflow"
    assert flood["incomplete"] is True and flood["lost_events"] > 0
    # every lost record was the flooding test's: kept in a window, charged to it alone
    assert flood["lost_events"] == run["lost_events"] == run["events"]["lost_in_tests"]
    assert "lost_outside_tests" not in run["events"]
    assert "lost_unkept" not in run["backend_stats"]
    for nodeid in QUIET:
        assert "incomplete" not in tests[nodeid] and "lost_events" not in tests[nodeid]
    assert tests[QUIET[0]]["needs"] == ["svc"]
    assert ("INCOMPLETE: records were lost while 1 test ran (test_loss.py::test_flood)"
            in proc.stderr + proc.stdout)
    tiers = _tiers(tmp_path)
    assert tiers.returncode == 0, tiers.stderr
    plan = e2e.json.loads((tmp_path / "plan.json").read_text())
    assert plan["assignments"] == {QUIET[0]: "full", QUIET[1]: "bare", FLOOD: "full",
                                   QUIET[2]: "bare"}
    assert plan["incomplete"] == [FLOOD]
    assert "1 test moved to full (the most complete tier)" in tiers.stderr


@needs_backend("ebpf")
def test_a_run_that_loses_nothing_has_no_new_keys(tmp_path):
    report, _ = e2e.run_one_file(tmp_path, "test_loss.py", SUITE, "svc",
                                 ["--backend", "ebpf"], pytest_args=("-k", "not flood"),
                                 config=CONFIG.replace("RINGBUF", ""))
    assert report["run"]["lost_events"] == 0
    assert not {"lost_in_tests", "lost_outside_tests"} & set(report["run"]["events"])
    assert "lost_unkept" not in report["run"]["backend_stats"]
    assert all(not {"incomplete", "lost_events"} & set(t) for t in report["tests"].values())
    tiers = _tiers(tmp_path)
    assert "incomplete" not in e2e.json.loads((tmp_path / "plan.json").read_text())
    assert "moved to" not in tiers.stderr
