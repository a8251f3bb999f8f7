"""One naming and one contact rule: the same suite gives the same per-test answer under every
backend. eBPF and strace must agree exactly; in-process only where it can see."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.support import e2e
from tests.support.backends import backend_marks, needs_backend as needs

# Probes, lookups, a gap and a leaked thread: what real suites showed.
PROBES_CONFTEST = r'''
import os, socket
import pytest

def refused():
    with socket.socket() as sock:
        sock.connect_ex(("127.0.0.1", int(os.environ["SVCTRACE_REFUSED_PORT"])))

@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    # after the call's end marker, before teardown's start: the call->teardown gap
    if report.when == "call" and report.nodeid.endswith("test_gap_after_call"):
        refused()
'''
PROBES_TESTS = r'''
import os, socket, subprocess, sys, threading, uuid
from conftest import refused

OFFLINE = """
import socket
try:
    socket.getaddrinfo("svctrace-test.invalid", 80)   # the resolver is unreachable
except OSError:
    pass
sock = socket.socket()
try:
    sock.connect(("169.254.169.254", 80))             # a cloud SDK's metadata probe
except OSError:
    pass
"""
_GO, _DONE = threading.Event(), threading.Event()


def test_uuid1_probes_uuidd():
    uuid.uuid1()


def test_missing_unix_socket():
    with socket.socket(socket.AF_UNIX) as sock:
        assert sock.connect_ex(os.environ["SVCTRACE_MISSING_SOCK"]) != 0


def test_dns_query_sent():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(bytes(12), ("127.0.0.1", 53))


def test_offline_lookup_and_metadata_probe():
    # a network namespace with no route: nothing can leave the machine
    subprocess.run(["unshare", "--net", sys.executable, "-c", OFFLINE], check=True)


def test_gap_after_call():
    pass


def _leaky():
    _GO.wait(30)
    refused()
    _DONE.set()


def test_leaks_a_thread():
    threading.Thread(target=_leaky, name="leaky", daemon=True).start()


def test_after_the_leak():
    _GO.set()
    assert _DONE.wait(30)
'''
PROBES = "test_probes.py::"
# Where the in-process backend is blind: C libraries and subprocesses without the plugin.
PROBES_INPROCESS_BLIND = {PROBES + "test_uuid1_probes_uuidd",  # libuuid's own socket
                          PROBES + "test_offline_lookup_and_metadata_probe"}


def view(report: dict) -> dict:
    """What must not depend on the backend: per test, services, needs, phases, failed
    probes, and each service's destinations and gaps; outside tests, reason -> services."""
    tests = {}
    for nodeid, test in report["tests"].items():
        tests[nodeid] = {
            "services": test["services"], "needs": test["needs"], "phases": test["phases"],
            "inherited": test["inherited"],
            "failed_probes": {name: probe["destinations"]
                              for name, probe in test["failed_probes"].items()},
            "destinations": {s: ev["destinations"] for s, ev in test["evidence"].items()},
            "gaps": {s: ev["gaps"] for s, ev in test["evidence"].items() if ev["gaps"]},
        }
    return {"tests": tests, "outside": {(u["reason"], u["detail"]): (
        sorted(u["services"]), sorted(u["failed_probes"])) for u in report["unattributed"]}}


def without(view_: dict, services: set[str], blind_tests: set[str]) -> dict:
    """The view as a backend blind to `services` (and to whole tests) would see it."""
    tests = {}
    for nodeid, test in view_["tests"].items():
        if nodeid in blind_tests:
            tests[nodeid] = None
            continue
        keep = {s for s in test["services"] if s not in services}
        tests[nodeid] = {**test, "services": sorted(keep),
                         "needs": [s for s in test["needs"] if s not in services],
                         "inherited": {s: f for s, f in test["inherited"].items()
                                       if s not in services},
                         "phases": {p: [s for s in svcs if s in keep]
                                    for p, svcs in test["phases"].items()},
                         "destinations": {s: d for s, d in test["destinations"].items()
                                          if s in keep},
                         "gaps": {s: g for s, g in test["gaps"].items() if s in keep}}
    return {"tests": tests}


def resolvers() -> set[str]:
    """Where glibc sends lookups: resolv.conf's name servers (127.0.0.1 when none)."""
    try:
        lines = Path("/etc/resolv.conf").read_text().splitlines()
    except OSError:
        lines = []
    found = {f"[{w[1]}]:53" if ":" in w[1] else f"{w[1]}:53" for w in map(str.split, lines)
             if len(w) >= 2 and w[0] == "nameserver"}
    return found or {"127.0.0.1:53"}


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory, sample_env) -> dict:
    missing = tmp_path_factory.mktemp("probe-target") / "missing.sock"
    return {**sample_env, "SVCTRACE_MISSING_SOCK": str(missing)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, probe_env):
    """report of (suite, backend), each run once for the whole module."""
    cache: dict = {}
    env = probe_env

    def run(suite: str, backend: str) -> dict:
        if (suite, backend) not in cache:
            base = tmp_path_factory.mktemp(f"{suite}-{backend}")
            if suite == "sample":
                folder = e2e.copy_suite(base, env)
            else:
                folder = base / "suite"
                folder.mkdir()
                (folder / "conftest.py").write_text(PROBES_CONFTEST)
                (folder / "test_probes.py").write_text(PROBES_TESTS)
                (folder / "pyproject.toml").write_text(env["_PYPROJECT"])
            report, proc = e2e.run_svctrace(backend, folder, env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            cache[suite, backend] = report
        return cache[suite, backend]
    return run


@needs("ebpf")
@needs("strace")
@pytest.mark.parametrize("suite", ["sample", "probes"])
def test_ebpf_and_strace_agree_test_by_test(runs, suite):
    kernel, ptrace = view(runs(suite, "ebpf")), view(runs(suite, "strace"))
    seen = set().union(*(set(t["services"]) | set(t["failed_probes"])
                         for t in kernel["tests"].values()))
    assert len(seen) >= 3, seen  # not two empty reports agreeing
    for nodeid in kernel["tests"]:
        assert kernel["tests"][nodeid] == ptrace["tests"][nodeid], nodeid
    assert kernel == ptrace


@needs("ebpf")
def test_inprocess_agrees_where_it_can_see(runs):
    kernel = view(runs("sample", "ebpf"))
    python = view(runs("sample", "inprocess"))
    assert any(t["services"] for t in python["tests"].values())
    blind_tests = {f"test_sample.py::{name}" for name in e2e.INPROCESS_BLIND_TESTS}
    expected = without(kernel, e2e.INPROCESS_BLIND, blind_tests)
    for nodeid, test in expected["tests"].items():
        if test is not None:
            assert python["tests"][nodeid] == test, nodeid
    kernel = view(runs("probes", "ebpf"))
    python = view(runs("probes", "inprocess"))
    for nodeid, test in without(kernel, set(), PROBES_INPROCESS_BLIND)["tests"].items():
        if test is not None:
            assert python["tests"][nodeid] == test, nodeid
    assert python["outside"] == kernel["outside"]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing")
@pytest.mark.parametrize("backend", [pytest.param(b, marks=backend_marks(b))
                                     for b in ("ebpf", "strace")])
def test_probes_lookups_gaps_and_leaked_threads(runs, probe_env, backend):
    report = runs("probes", backend)
    tests = {nodeid.split("::")[1]: test for nodeid, test in report["tests"].items()}
    assert all(t["outcome"] == "passed" for t in tests.values())
    assert {name: (t["services"], sorted(t["failed_probes"])) for name, t in tests.items()} == {
        "test_uuid1_probes_uuidd": ([], []),
        "test_missing_unix_socket": ([], ["unix:" + probe_env["SVCTRACE_MISSING_SOCK"]]),
        "test_dns_query_sent": (["dns"], []),
        "test_offline_lookup_and_metadata_probe": ([], ["169.254.169.254:80", "dns"]),
        "test_gap_after_call": (["refused-svc"], []),
        "test_leaks_a_thread": ([], []),
        "test_after_the_leak": ([], []),
    }
    assert tests["test_dns_query_sent"]["needs"] == ["dns"]
    offline = tests["test_offline_lookup_and_metadata_probe"]["failed_probes"]
    assert offline["dns"]["first"]["result"] == "enetunreach"
    assert offline["dns"]["destinations"] and set(offline["dns"]["destinations"]) <= resolvers()
    assert offline["169.254.169.254:80"]["connects"] == 1
    gap = tests["test_gap_after_call"]["evidence"]["refused-svc"]
    assert gap["phases"] == ["call"] and gap["gaps"] == ["call->teardown"]
    leaked = [u for u in report["unattributed"] if u["reason"] == "outlived-test"]
    assert [(u["detail"], u["services"]) for u in leaked] == [
        (f"thread started in {PROBES}test_leaks_a_thread", ["refused-svc"])]
    assert leaked[0]["evidence"]["refused-svc"]["first"]["born_in"] == \
        PROBES + "test_leaks_a_thread"

