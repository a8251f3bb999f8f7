"""End to end: host:port, CIDR and CIDR:port rules against services at their own
non-loopback addresses, inside a network namespace this test creates (and removes)."""
from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from tests.support import e2e
from tests.support.backends import backend_marks
from tests.support.netns import free_subnet, leftovers, missing_privileges, service_host

SUITE = Path(__file__).resolve().parent / "suites" / "netns"
APP, METRICS = 8080, 9999
pytestmark = pytest.mark.skipif(missing_privileges() is not None,
                                reason=str(missing_privileges()))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def host():
    net = free_subnet()
    a, b = str(net.network_address + 2), str(net.network_address + 3)
    with service_host("svct", [a, b], [APP, METRICS]) as info:
        yield info


@pytest.fixture(scope="module")
def netns_suite(tmp_path_factory, host):
    """A copy of tests/suites/netns whose pyproject names the namespace's services. Rules are
    listed least specific first: specificity, not order, must decide."""
    net, (a, _) = host.subnet, host.addresses
    closed = _closed_port()
    target = tmp_path_factory.mktemp("netns") / "suite"
    shutil.copytree(SUITE, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "pyproject.toml").write_text(
        "[tool.svctrace]\n"
        "[tool.svctrace.services]\n"
        f'internal = ["{net}"]\n'
        f'metrics = ["{net}:{METRICS}"]\n'
        f'billing-api = ["{a}:{APP}"]\n')
    env = {"SVCT_NETNS_A": host.addresses[0], "SVCT_NETNS_B": host.addresses[1],
           "SVCT_NETNS_APP_PORT": str(APP), "SVCT_NETNS_METRICS_PORT": str(METRICS),
           "SVCT_NETNS_CLOSED_PORT": str(closed)}
    return target, env, closed


@pytest.fixture(scope="module")
def reports(netns_suite):
    """One `svctrace run` per backend, shared by the tests below."""
    suite, env, _ = netns_suite
    cache: dict[str, dict] = {}

    def get(backend: str) -> dict:
        if backend not in cache:
            report, proc = e2e.run_svctrace(backend, suite, env, report_name=f"{backend}.json")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            cache[backend] = report
        return cache[backend]
    return get


def _backends():
    return pytest.mark.parametrize("backend", [pytest.param(name, marks=backend_marks(name))
                                               for name in ("ebpf", "strace", "inprocess")])


@_backends()
def test_rules_classify_services_at_their_own_addresses(reports, netns_suite, host, backend):
    _, _, closed = netns_suite
    report = reports(backend)
    assert report["run"]["backend"] == backend
    assert report["run"]["exit_code"] == 0
    assert report["run"]["lost_events"] == 0
    a, b = host.addresses
    unmatched = f"tcp:127.0.0.1:{closed}"
    # Refused where no rule names it: a failed probe, not a service. strace does not see
    # the refusal of a connect with a timeout (it stays "in progress"): a contact there.
    probe = [unmatched] if backend == "strace" else []
    want = {
        "test_hosts.py::test_billing_api": ["billing-api"],       # host:port beats CIDR(:port)
        "test_hosts.py::test_other_host_same_port": ["internal"],  # CIDR: the other address
        "test_hosts.py::test_metrics_on_a": ["metrics"],           # CIDR:port beats CIDR
        "test_hosts.py::test_metrics_on_b": ["metrics"],
        "test_hosts.py::test_unmatched_loopback": probe,           # no rule: by address
        "test_hosts.py::test_no_services": [],
    }
    assert {n: t["services"] for n, t in report["tests"].items()} == want
    assert {n: t["phases"] for n, t in report["tests"].items()} == {
        n: {"setup": [], "call": s, "teardown": []} for n, s in want.items()}
    destinations = {n: {s: sorted(ev["destinations"]) for s, ev in t["evidence"].items()}
                    for n, t in report["tests"].items()}
    assert destinations == {
        "test_hosts.py::test_billing_api": {"billing-api": [f"tcp:{a}:{APP}"]},
        "test_hosts.py::test_other_host_same_port": {"internal": [f"tcp:{b}:{APP}"]},
        "test_hosts.py::test_metrics_on_a": {"metrics": [f"tcp:{a}:{METRICS}"]},
        "test_hosts.py::test_metrics_on_b": {"metrics": [f"tcp:{b}:{METRICS}"]},
        "test_hosts.py::test_unmatched_loopback": {unmatched: [unmatched]} if probe else {},
        "test_hosts.py::test_no_services": {},
    }
    ours = {"billing-api", "internal", "metrics"}
    assert not ours & set().union(set(), *e2e.unattributed(report).values())


@_backends()
def test_connect_results_at_their_own_addresses(reports, netns_suite, backend):
    _, _, closed = netns_suite
    tests = reports(backend)["tests"]
    for name in ("test_billing_api", "test_other_host_same_port", "test_metrics_on_a",
                 "test_metrics_on_b"):
        (evidence,) = tests[f"test_hosts.py::{name}"]["evidence"].values()
        assert (evidence["connects"], evidence["failed_connects"]) == (1, 0), (name, evidence)
        assert evidence["sends"] >= 1 and evidence["first"]["result"] != "refused", evidence
    test = tests["test_hosts.py::test_unmatched_loopback"]
    # refused where nothing names it: a failed probe (strace: a contact "in progress")
    refused = test["evidence"][f"tcp:127.0.0.1:{closed}"] if backend == "strace" \
        else test["failed_probes"][f"127.0.0.1:{closed}"]
    assert refused["connects"] == 1, refused
    # strace does not trace getsockopt(SO_ERROR): a non-blocking connect (Python's with a
    # timeout) refused after it returned EINPROGRESS stays "in progress" there.
    if backend != "strace" or refused["first"]["result"] != "in progress":
        assert refused["failed_connects"] == 1 and refused["first"]["result"] == "refused", \
            refused


def test_service_host_cleans_up_when_the_body_fails():
    net = free_subnet()
    seen = []
    with pytest.raises(RuntimeError, match="body failed"):
        with service_host("svct", [str(net.network_address + 2)], [APP]) as info:
            seen.append(info)
            with socket.create_connection((info.addresses[0], APP), timeout=5):
                pass
            raise RuntimeError("body failed")
    assert seen and leftovers(seen[0]) == []
