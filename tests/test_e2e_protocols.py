"""End to end, eBPF: destinations named from their own traffic, with no service rules."""
from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pytest

from tests.support import e2e
from tests.support.backends import backend_marks, needs_backend

SUITE = Path(__file__).resolve().parent / "suites" / "protocols"
TLS_SERVER = """
import socket, ssl, sys
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
print(srv.getsockname()[1], flush=True)
while True:
    conn, _ = srv.accept()
    try:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(256); tls.sendall(b"HTTP/1.1 200 OK\\r\\ncontent-length: 0\\r\\n\\r\\n")
    except OSError:
        pass
"""


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def _wait(address: str, port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((address, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {address}:{port}")


def _forward(target: int):
    """A loopback TCP forwarder to 127.0.0.1:target on a port of its own: (port, stop)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    done = threading.Event()

    def pump(src, dst):
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def serve():
        while not done.is_set():
            try:
                client = server.accept()[0]
            except OSError:
                continue
            upstream = socket.create_connection(("127.0.0.1", target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop():
        done.set()
        thread.join(5)
        server.close()

    return server.getsockname()[1], stop


@pytest.fixture
def servers(tmp_path, services, kafka_bootstrap):
    """Every server outside the traced suite, on ports of their own."""
    if not shutil.which("openssl"):
        pytest.skip("the openssl command is missing: it makes the TLS server's certificate")
    procs = []

    def start(cmd, address, port, **kw):
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, **kw))
        _wait(address, port)

    redis_port, http_port = _free_port(), _free_port()
    start(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(tmp_path)], "127.0.0.1", redis_port)
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_text("ok\n")
    start([sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1",
           "--directory", str(tmp_path / "www")], "127.0.0.1", http_port)
    start([sys.executable, "-m", "http.server", "9000", "--bind", "127.0.0.2",
           "--directory", str(tmp_path / "www")], "127.0.0.2", 9000)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=api.example.test", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    tls = subprocess.Popen([sys.executable, "-c", TLS_SERVER, str(cert), str(key)],
                           stdout=subprocess.PIPE, text=True)
    procs.append(tls)
    tls_port = int(tls.stdout.readline())
    # PostgreSQL on a port of its own: the real server, through a forwarder outside the
    # traced tree (a second cluster would cost an initdb)
    pg_port, stop = _forward(services["pg_port"])
    dsn = urllib.parse.urlparse(services["pg_dsn"])
    yield {"WIRE_REDIS_PORT": str(redis_port), "WIRE_HTTP_PORT": str(http_port),
           "WIRE_TLS_PORT": str(tls_port), "WIRE_KAFKA": kafka_bootstrap,
           "WIRE_PG_PORT": str(pg_port), "WIRE_PG_DB": dsn.path.lstrip("/"),
           "WIRE_PG_USER": dsn.username or ""}
    stop()
    for proc in procs:
        proc.terminate()
        proc.wait(10)


@needs_backend("ebpf")
def test_ebpf_names_destinations_from_their_traffic(tmp_path, servers):
    suite = tmp_path / "suite"
    shutil.copytree(SUITE, suite, ignore=shutil.ignore_patterns("__pycache__"))
    (suite / "pyproject.toml").write_text("[tool.svctrace]\n")  # no service rules at all
    report, proc = e2e.run_svctrace("ebpf", suite, servers)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = {n.split("::")[1]: t for n, t in report["tests"].items()}
    http, tls = servers["WIRE_HTTP_PORT"], servers["WIRE_TLS_PORT"]
    assert tests["test_redis_on_its_own_port"]["services"] == ["redis"]
    assert tests["test_postgres_on_its_own_port"]["services"] == ["postgres"]
    assert tests["test_kafka_on_its_own_port"]["services"] == ["kafka"]
    assert tests["test_http_by_host"]["services"] == [f"billing.internal:{http}"]
    assert tests["test_tls_by_sni"]["services"] == [f"api.example.test:{tls}"]
    assert tests["test_http_mock_on_9000"]["services"] == ["http:127.0.0.2:9000"]
    own = tests["test_redis_the_suite_starts_itself"]
    assert own["services"] == ["redis"] and own["suite_started"] == ["redis"]
    assert own["needs"] == []
    helper = tests["test_a_helper_the_suite_starts_is_no_service"]
    assert helper["services"] == [] and "suite_listener" in helper["ignored"]
    probe = tests["test_probe_of_a_closed_port"]
    assert probe["services"] == [] and len(probe["failed_probes"]) == 1
    dests = report["destinations"]
    redis_dest = dests[f"tcp:127.0.0.1:{servers['WIRE_REDIS_PORT']}"]
    assert redis_dest["protocol"] == "redis"
    assert redis_dest["recognised_from"].startswith("a RESP command")
    assert dests[f"tcp:127.0.0.1:{servers['WIRE_PG_PORT']}"]["protocol"] == "postgres"
    kafka = dests["tcp:" + servers["WIRE_KAFKA"].split(",")[0]]
    assert kafka["recognised_from"].startswith("an ApiVersions request")
    assert dests[f"tcp:127.0.0.1:{tls}"]["hosts"] == ["api.example.test"]
    summary = subprocess.run([*e2e.SVCTRACE, "summary", "-v", str(suite / "report.json")],
                             capture_output=True, text=True, check=True).stdout
    assert f"redis at 127.0.0.1:{servers['WIRE_REDIS_PORT']}, recognised from a RESP" in summary


def _services(report: dict) -> dict[str, list[str]]:
    return {n.split("::")[1]: t["services"] for n, t in report["tests"].items()}


@pytest.mark.parametrize("backend", [
    pytest.param("strace", marks=backend_marks("strace")), "inprocess"])
def test_other_backends_name_what_they_see(tmp_path, servers, backend):
    """strace reads the bytes it prints of a first send (not OpenSSL's handshake writes);
    in-process reads Python's sends (not libpq's nor librdkafka's, and a TLS socket's
    plaintext) and sees no listener of a non-Python subprocess."""
    suite = tmp_path / "suite"
    shutil.copytree(SUITE, suite, ignore=shutil.ignore_patterns("__pycache__"))
    (suite / "pyproject.toml").write_text("[tool.svctrace]\n")
    report, proc = e2e.run_svctrace(backend, suite, servers)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    http, tls = servers["WIRE_HTTP_PORT"], servers["WIRE_TLS_PORT"]
    got = _services(report)
    helper = got.pop("test_a_helper_the_suite_starts_is_no_service")
    common = {"test_redis_on_its_own_port": ["redis"],
              "test_http_by_host": [f"billing.internal:{http}"],
              "test_http_mock_on_9000": ["http:127.0.0.2:9000"],
              "test_redis_the_suite_starts_itself": ["redis"],
              "test_probe_of_a_closed_port": []}
    if backend == "strace":
        assert got == {**common, "test_postgres_on_its_own_port": ["postgres"],
                       "test_kafka_on_its_own_port": ["kafka"],
                       "test_tls_by_sni": [f"tcp:127.0.0.1:{tls}"]}  # writes: not traced
        assert helper == []
        own = report["tests"]["test_wire.py::test_redis_the_suite_starts_itself"]
        assert own["suite_started"] == ["redis"] and own["needs"] == []
    else:
        assert got == {**common, "test_postgres_on_its_own_port": [],
                       "test_kafka_on_its_own_port": [],
                       "test_tls_by_sni": ["api.example.test"]}  # its plaintext's Host
        # the helper's listen is not seen (a subprocess without the plugin): by address,
        # or by "localhost" where the run resolved it to 127.0.0.1 (the names join)
        assert len(helper) == 1 and helper[0].startswith(("tcp:127.0.0.1:", "tcp:localhost:"))
    assert any("protocol" in spot or "TLS" in spot for spot in report["run"]["blind_spots"])
