"""Session fixtures for svctrace's own tests: real services and capability flags."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.support import e2e
from tests.support.services import ServicesUnavailable, ensure_services, kafka_mock_cluster

pytest_plugins = ["pytester"]
collect_ignore_glob = ["suites/*"]  # sample projects run by the end-to-end tests


@pytest.fixture(scope="session")
def services() -> dict:
    """Real PostgreSQL and Redis on loopback, started by scripts/services.py."""
    try:
        return ensure_services()
    except ServicesUnavailable as exc:
        pytest.fail(f"services missing: {exc}")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """librdkafka's mock cluster hosted in its own process: a real Kafka-protocol broker
    on loopback TCP (no Kafka package exists here)."""
    with kafka_mock_cluster() as bootstrap:
        yield bootstrap


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def http_url(tmp_path_factory) -> str:
    """A real HTTP service in its own process (python -m http.server)."""
    port = _free_port()
    root = tmp_path_factory.mktemp("www")
    (root / "index.html").write_text("ok\n")
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1", "--directory", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("http.server did not start within 10 s")
    yield f"http://127.0.0.1:{port}/"
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="session")
def sample_env(services, kafka_bootstrap, http_url) -> dict:
    return e2e.sample_environment(services, kafka_bootstrap, http_url, _free_port())


@pytest.fixture
def sample_suite(tmp_path, sample_env):
    """A fresh copy of tests/suites/services with its pyproject naming the test services."""
    return e2e.copy_suite(tmp_path, sample_env)


def pytest_report_header(config):
    from svctrace.capture import availability
    return ["svctrace backends: " + ", ".join(
        f"{name}={'usable' if reason is None else 'unavailable'}"
        for name, reason in availability().items())]


os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
