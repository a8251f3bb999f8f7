"""A suite with no service rules at all: svctrace must name what it reaches from the wire.

Servers outside the suite (started by the test that runs this suite): Redis, PostgreSQL,
a Kafka-protocol broker, an HTTP server reached as billing.internal, a TLS server reached
as api.example.test, an HTTP mock on port 9000. Servers inside it: a redis-server and a
silent helper that the tests start themselves.
"""
import os
import socket
import ssl
import subprocess
import sys
import time

import psycopg2
import pytest
import redis
import urllib3
from confluent_kafka import Producer

ENV = os.environ


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def test_redis_on_its_own_port():
    assert redis.Redis(port=int(ENV["WIRE_REDIS_PORT"])).ping()


def test_postgres_on_its_own_port():
    conn = psycopg2.connect(host="127.0.0.1", port=ENV["WIRE_PG_PORT"],
                            dbname=ENV["WIRE_PG_DB"], user=ENV["WIRE_PG_USER"])
    with conn, conn.cursor() as cur:
        cur.execute("select 1")
    conn.close()


def test_kafka_on_its_own_port():
    producer = Producer({"bootstrap.servers": ENV["WIRE_KAFKA"]})
    producer.produce("wire", b"x")
    assert producer.flush(15) == 0


def test_http_by_host():
    http = urllib3.PoolManager()
    port = ENV["WIRE_HTTP_PORT"]
    reply = http.request("GET", f"http://127.0.0.1:{port}/", retries=False,
                         headers={"Host": f"billing.internal:{port}"})
    assert reply.status == 200


def test_tls_by_sni():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", int(ENV["WIRE_TLS_PORT"]))) as raw:
        with ctx.wrap_socket(raw, server_hostname="api.example.test") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: api.example.test\r\n\r\n")
            assert tls.recv(64)


def test_http_mock_on_9000():
    reply = urllib3.PoolManager().request("GET", "http://127.0.0.2:9000/", retries=False)
    assert reply.status == 200


@pytest.fixture
def own_redis(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL)
    _wait_port(port)
    yield port
    proc.terminate()
    proc.wait(10)


def test_redis_the_suite_starts_itself(own_redis):
    assert redis.Redis(port=own_redis).ping()


HELPER = """
import socket, sys
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept(); conn.recv(64); conn.sendall(b"\\x05\\x00"); conn.recv(64)
"""


def test_a_helper_the_suite_starts_is_no_service():
    proc = subprocess.Popen([sys.executable, "-c", HELPER], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"\x05\x01\x00")  # a SOCKS5 greeting: no protocol svctrace knows
        assert sock.recv(2) == b"\x05\x00"
    proc.wait(10)


def test_probe_of_a_closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
