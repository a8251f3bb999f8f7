"""End to end: services reached by host name are reported by the names the suite used,
learned from DNS replies of a server of the test's own (in a network namespace it creates)
and from a hosts file, under `svctrace run --backend ebpf`."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.support import e2e
from tests.support.backends import backend_marks
from tests.support.dns import dns_server
from tests.support.netns import free_subnet, missing_privileges, service_host

SUITE = Path(__file__).resolve().parent / "suites" / "names"
MYSTERY = 7777
pytestmark = [pytest.mark.skipif(missing_privileges() is not None,
                                 reason=str(missing_privileges())),
              pytest.mark.skipif(shutil.which("unshare") is None,
                                 reason="unshare (util-linux) is missing: the suite needs a "
                                        "resolv.conf and hosts file of its own"),
              pytest.mark.skipif(shutil.which("redis-server") is None,
                                 reason="redis-server is missing")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory):
    """A redis-server of this test's own on a port of its own (not 6379)."""
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("redis-server did not start within 10 s")
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def named(tmp_path_factory, services, redis_port):
    """(suite dir, env, wrapper prefix, namespace addresses): a DNS server in a namespace
    of our own, and a resolv.conf + hosts file bind-mounted for the suite only."""
    net = free_subnet()
    a, b = str(net.network_address + 2), str(net.network_address + 3)
    table = {"cache.ci": "127.0.0.1", "pg.ci": "cname:db.svc.ci", "db.svc.ci": "127.0.0.1",
             "mystery.ci": b, "clickhouse.ci": "127.0.0.1"}
    with service_host("svcn", [a, b], [MYSTERY]) as host, \
            dns_server(host.namespace, a, table):
        etc = tmp_path_factory.mktemp("etc")
        (etc / "resolv.conf").write_text(f"nameserver {a}\noptions timeout:2 attempts:2\n")
        (etc / "hosts").write_text(f"127.0.0.1 localhost\n{b} files.ci\n")
        target = tmp_path_factory.mktemp("names") / "suite"
        shutil.copytree(SUITE, target, ignore=shutil.ignore_patterns("__pycache__"))
        (target / "pyproject.toml").write_text(
            "[tool.svctrace]\n[tool.svctrace.services]\n"
            'redis = ["cache.ci:*"]\n')  # a rule by the name the run observed
        pg = urlparse(services["pg_dsn"])
        env = {"SVCT_NAMES_REDIS_PORT": str(redis_port),
               "SVCT_NAMES_MYSTERY_PORT": str(MYSTERY),
               "SVCT_NAMES_CLOSED_PORT": str(_free_port()),
               "SVCT_NAMES_PG_PORT": str(pg.port), "SVCT_NAMES_PG_USER": pg.username,
               "SVCT_NAMES_PG_DB": pg.path.lstrip("/")}
        # A private mount namespace: only the suite sees this resolv.conf and hosts file.
        prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                  f'mount --bind {etc}/resolv.conf /etc/resolv.conf && '
                  f'mount --bind {etc}/hosts /etc/hosts && exec "$@"', "sh"]
        yield target, env, prefix, (a, b)


def _run(named, backend: str) -> dict:
    suite, env, prefix, _ = named
    report = suite / f"{backend}.json"
    cmd = [*prefix, *e2e.SVCTRACE, "run", "--backend", backend, "--report", str(report),
           "--progress", "0", "--", sys.executable, "-m", "pytest", "-q",
           "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=suite, env=e2e.child_env(env), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json
    return json.loads(report.read_text())


@pytest.fixture(scope="module")
def ebpf_report(named):
    return _run(named, "ebpf")


def _names(evidence: dict) -> dict[str, list[tuple[str, str]]]:
    return {label: sorted((n["name"], n["how"]) for n in entry.get("names", []))
            for label, entry in evidence["by_destination"].items()}


@pytest.mark.parametrize("backend", [pytest.param("ebpf", marks=backend_marks("ebpf"))])
def test_services_are_named_by_the_names_the_suite_used(named, ebpf_report, redis_port,
                                                         services, backend):
    report = ebpf_report
    _, _, _, (a, b) = named
    tests = {n.split("::")[1]: t for n, t in report["tests"].items()}
    pg_port = urlparse(services["pg_dsn"]).port
    # (each lookup is also a contact with the test's DNS server: the default "dns" rule)
    services_seen = {name: [s for s in test["services"] if s != "dns"]
                     for name, test in tests.items()}
    assert services_seen == {
        "test_redis_by_name": ["redis"],  # the rule by name
        "test_postgres_by_cname": ["postgres"],
        # unknown protocol, known name: by the name, never by the address alone
        "test_unknown_protocol_by_name": [f"tcp:mystery.ci:{MYSTERY}"],
        # refused: no bytes, but the name's first label is a service
        "test_refused_by_name": ["clickhouse"],
        "test_hosts_file_name": [f"tcp:files.ci:{MYSTERY}"],
        "test_no_names": [],
    }
    assert "dns" in tests["test_redis_by_name"]["services"]

    redis_ev = tests["test_redis_by_name"]["evidence"]["redis"]
    assert _names(redis_ev) == {f"tcp:127.0.0.1:{redis_port}": [("cache.ci", "dns")]}
    pg_ev = tests["test_postgres_by_cname"]["evidence"]["postgres"]
    assert _names(pg_ev) == {f"tcp:127.0.0.1:{pg_port}": [("pg.ci", "dns")]}
    (first_name,) = pg_ev["first"]["names"]
    assert first_name["aliases"] == ["db.svc.ci"] and first_name["server"] == f"udp:{a}:53"
    mystery = tests["test_unknown_protocol_by_name"]["evidence"][f"tcp:mystery.ci:{MYSTERY}"]
    assert _names(mystery) == {f"tcp:{b}:{MYSTERY}": [("mystery.ci", "dns")]}
    files = tests["test_hosts_file_name"]["evidence"][f"tcp:files.ci:{MYSTERY}"]
    assert _names(files) == {f"tcp:{b}:{MYSTERY}": [("files.ci", "nss")]}  # hosts file
    assert report["run"]["names"]["pg.ci"] == {"addresses": ["127.0.0.1"], "how": ["dns"]}
    assert report["run"]["names"]["files.ci"] == {"addresses": [b], "how": ["nss"]}
    assert report["run"]["name_lookups"]["nss_lookups"] >= 5
    assert report["run"]["name_lookups"]["dns_replies"] >= 4


@pytest.mark.parametrize("backend", [pytest.param("inprocess", marks=backend_marks("inprocess"))])
def test_inprocess_names_what_python_resolved(named, backend):
    """In-process sees Python's socket.getaddrinfo only: libpq's own lookup is a blind spot
    (it does not see libpq's connection either)."""
    report = _run(named, backend)
    tests = {n.split("::")[1]: t for n, t in report["tests"].items()}
    assert {name: [s for s in test["services"] if s != "dns"]
            for name, test in tests.items()} == {
        "test_redis_by_name": ["redis"],
        "test_postgres_by_cname": [],
        "test_unknown_protocol_by_name": [f"tcp:mystery.ci:{MYSTERY}"],
        "test_refused_by_name": ["clickhouse"],
        "test_hosts_file_name": [f"tcp:files.ci:{MYSTERY}"],
        "test_no_names": [],
    }
    assert any("getaddrinfo" in spot for spot in report["run"]["blind_spots"])


INTERNET_SUITE = '''
import errno, socket, pytest

def attempt(address):
    sock = socket.socket()
    try:
        return sock.connect_ex((address, 443))
    finally:
        sock.close()

def test_reaches_the_internet():
    # refused by the guard before any packet could leave (this network namespace has no
    # route anywhere anyway: without the guard it is ENETUNREACH)
    assert attempt("192.88.99.1") == errno.ECONNREFUSED

def test_private_address_is_not_the_internet():
    assert attempt("10.231.0.9") == errno.ENETUNREACH
'''


@pytest.mark.parametrize("backend", [pytest.param("ebpf", marks=backend_marks("ebpf"))])
def test_deny_internet_refuses_public_addresses_only(tmp_path, backend):
    """`--deny internet` inside a network namespace with no interface up: nothing can leave
    the machine whatever the guard does; the guard must refuse the public address first."""
    (tmp_path / "test_net.py").write_text(INTERNET_SUITE)
    cmd = ["unshare", "--net", *e2e.SVCTRACE, "run", "--backend", backend, "--deny",
           "internet", "-o", "r.json", "--progress", "0", "--", sys.executable, "-m",
           "pytest", "-q", "-p", "no:cacheprovider", "test_net.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    tests = report["tests"]
    assert tests["test_net.py::test_reaches_the_internet"]["denied"] == ["internet"]
    assert tests["test_net.py::test_private_address_is_not_the_internet"]["denied"] == []
    assert report["run"]["guard"]["refusals"] == {"internet": 1}


GUARDED_SUITE = '''
import os, socket, pytest

REDIS_PORT = int(os.environ["SVCT_NAMES_REDIS_PORT"])
MYSTERY_PORT = int(os.environ["SVCT_NAMES_MYSTERY_PORT"])

def test_denied_by_name():
    # the rule is by name only: redis at cache.ci, refused at the address it resolved to
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("cache.ci", REDIS_PORT), timeout=5).close()

def test_same_address_other_port_is_not_denied():
    # the guard refuses addresses: cache.ci is 127.0.0.1, so the rule gives its port
    socket.create_connection(("127.0.0.1", int(os.environ["SVCT_NAMES_PG_PORT"])),
                             timeout=5).close()

def test_other_name_is_not_denied():
    socket.create_connection(("mystery.ci", MYSTERY_PORT), timeout=5).close()
'''


@pytest.mark.parametrize("backend", [pytest.param("ebpf", marks=backend_marks("ebpf"))])
def test_deny_by_name_refuses_the_addresses_the_name_resolved_to(named, tmp_path, backend):
    """`--deny redis` where redis is known only by name (cache.ci:*): getaddrinfo's result
    holds the process until the guard refuses that address and port, so the very first
    connect is refused."""
    _, env, prefix, _ = named
    (tmp_path / "test_guarded.py").write_text(GUARDED_SUITE)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.svctrace]\n[tool.svctrace.services]\n'
        f'redis = ["cache.ci:{env["SVCT_NAMES_REDIS_PORT"]}"]\n')
    cmd = [*prefix, *e2e.SVCTRACE, "run", "--backend", backend, "--deny", "redis", "-o",
           "r.json", "--progress", "0", "--", sys.executable, "-m", "pytest", "-q",
           "-p", "no:cacheprovider", "test_guarded.py"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=e2e.child_env(env), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json
    report = json.loads((tmp_path / "r.json").read_text())
    tests = {n.split("::")[1]: t for n, t in report["tests"].items()}
    assert tests["test_denied_by_name"]["denied"] == ["redis"]
    assert tests["test_same_address_other_port_is_not_denied"]["denied"] == []
    assert tests["test_other_name_is_not_denied"]["denied"] == []
    assert report["run"]["guard"]["refusals"] == {"redis": 1}
