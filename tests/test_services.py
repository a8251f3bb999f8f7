"""The real services the end-to-end tests rely on: Postgres, Redis, a Kafka mock broker."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid

import pytest

from tests.support.services import (SERVICES_PY, ServicesUnavailable, ensure_services,
                                    kafka_mock_cluster)

# Produces one message from a separate process, as an application under test would; prints
# the flush() result and each delivery report. Separate so a hang is caught by a timeout.
PRODUCE = r"""
import json, sys, time
from confluent_kafka import Producer
bootstrap, topic, payload, conf = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
reports = []
def report(err, msg):
    reports.append({"error": err.name() if err else None, "topic": msg.topic()})
p = Producer({"bootstrap.servers": bootstrap, **conf})
t0 = time.monotonic()
p.produce(topic, payload.encode(), callback=report)
remaining = p.flush(30)
print(json.dumps({"remaining": remaining, "reports": reports,
                  "seconds": time.monotonic() - t0}))
"""


@pytest.fixture(scope="module")
def services() -> dict:
    try:
        return ensure_services()
    except ServicesUnavailable as e:
        if os.environ.get("CI"):  # scripts/setup.sh installs them: absent in CI is a bug
            raise
        pytest.skip(str(e))


def produce(bootstrap: str, payload: str, **conf) -> dict:
    out = subprocess.run([sys.executable, "-c", PRODUCE, bootstrap, "t1", payload,
                          json.dumps(conf)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def closed_port() -> int:
    """A loopback port nothing listens on: bound by us, then released."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_start_is_idempotent_and_status_ok(services):
    again = subprocess.run([sys.executable, str(SERVICES_PY), "start"],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    status = subprocess.run([sys.executable, str(SERVICES_PY), "status"],
                            capture_output=True, text=True)
    assert status.returncode == 0, status.stdout


@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
@pytest.mark.parametrize("via", ["tcp", "unix"])
def test_postgres_reachable(services, driver, via):
    mod = pytest.importorskip(driver)
    if via == "tcp":
        conn = mod.connect(services["pg_dsn"])
    else:
        conn = mod.connect(host=services["pg_socket_dir"], port=services["pg_port"],
                           dbname="svctrace", user="svctrace")
    try:
        cur = conn.cursor()
        # inet_server_addr() is NULL over a unix socket: proves which path was taken.
        cur.execute("SELECT current_database(), host(inet_server_addr())")
        assert cur.fetchone() == ("svctrace", "127.0.0.1" if via == "tcp" else None)
    finally:
        conn.close()


def test_postgres_default_socket_for_hostless_psycopg2(services):
    """Apps that connect with no host use libpq's default /var/run/postgresql."""
    psycopg2 = pytest.importorskip("psycopg2")
    if not os.path.exists(f"/var/run/postgresql/.s.PGSQL.{services['pg_port']}"):
        pytest.skip("/var/run/postgresql is absent or not writable by the postgres user")
    conn = psycopg2.connect(dbname="svctrace", user="svctrace", port=services["pg_port"])
    try:
        assert conn.info.host == "/var/run/postgresql"  # libpq PQhost(): the socket dir
    finally:
        conn.close()


def test_redis_ping(services):
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(services["redis_url"])
    try:
        assert client.ping() is True
    finally:
        client.close()


def test_kafka_mock_produce_from_other_process_and_consume():
    ck = pytest.importorskip("confluent_kafka")
    payload = uuid.uuid4().hex
    with kafka_mock_cluster() as bootstrap:
        assert bootstrap.startswith("127.0.0.1:")
        result = produce(bootstrap, payload)
        assert result["remaining"] == 0
        assert result["reports"] == [{"error": None, "topic": "t1"}]

        consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "svctrace-test",
                                "auto.offset.reset": "earliest"})
        try:
            consumer.subscribe(["t1"])
            got = None
            for _ in range(30):
                msg = consumer.poll(1.0)
                if msg is not None and msg.error() is None:
                    got = msg.value().decode()
                    break
            assert got == payload
        finally:
            consumer.close()
    # The broker process is gone with the context: its port refuses connections now.
    host, port = bootstrap.split(":")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, int(port)), timeout=2).close()


def test_kafka_produce_to_refused_port_fails_with_delivery_error():
    """The failure the design cites: no broker means _MSG_TIMED_OUT, promptly, no hang."""
    pytest.importorskip("confluent_kafka")
    result = produce(f"127.0.0.1:{closed_port()}", "lost", **{"message.timeout.ms": 1500})
    assert result["remaining"] == 0
    assert result["reports"] == [{"error": "_MSG_TIMED_OUT", "topic": "t1"}]
    assert result["seconds"] < 15
