"""Protocol recognisers on the bytes real client libraries send first (join/protocols.py)."""
from __future__ import annotations

import random
import socket
import ssl
import struct

import pytest

from svctrace.join.protocols import AMBIGUOUS, RECOGNISERS, recognise
from tests.support.first_bytes import first_bytes

psycopg2 = pytest.importorskip("psycopg2")
psycopg = pytest.importorskip("psycopg")
redis = pytest.importorskip("redis")
urllib3 = pytest.importorskip("urllib3")
confluent_kafka = pytest.importorskip("confluent_kafka")
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402


@pytest.fixture(scope="module")
def captured() -> dict[str, bytes]:
    """What each real client sent first to a listener that then hung up."""
    def kafka(port):
        producer = confluent_kafka.Producer({"bootstrap.servers": f"127.0.0.1:{port}",
                                             "log_level": 0})
        producer.poll(1.5)

    def tls(port):
        raw = socket.create_connection(("127.0.0.1", port), timeout=3)
        ssl.create_default_context().wrap_socket(raw, server_hostname="api.example.test")

    once = Retry(NoBackoff(), 0)  # the listener hangs up: do not back off and retry
    clients = {
        "psycopg2": lambda p: psycopg2.connect(host="127.0.0.1", port=p, user="app",
                                               password="hunter2", dbname="app",
                                               sslmode="disable", connect_timeout=3),
        "psycopg2-ssl": lambda p: psycopg2.connect(host="127.0.0.1", port=p, user="app",
                                                   dbname="app", sslmode="prefer",
                                                   connect_timeout=3),
        "psycopg": lambda p: psycopg.connect(host="127.0.0.1", port=p, user="app",
                                             password="hunter2", dbname="app",
                                             sslmode="disable", connect_timeout=3),
        "redis-py": lambda p: redis.Redis(port=p, password="sekret-pw", socket_timeout=3,
                                          retry=once).ping(),
        "redis-py-resp2": lambda p: redis.Redis(port=p, protocol=2, socket_timeout=3,
                                                retry=once).ping(),
        "urllib3": lambda p: urllib3.PoolManager().request(
            "GET", f"http://127.0.0.1:{p}/v1/invoices", retries=False, timeout=3,
            headers={"Host": "billing.internal:8080"}),
        "ssl": tls,
        "confluent-kafka": kafka,
    }
    return {name: first_bytes(client) for name, client in clients.items()}


@pytest.mark.parametrize("client, protocol, source", [
    ("psycopg2", "postgres", "a StartupMessage"),
    ("psycopg2-ssl", "postgres", "an SSLRequest"),
    ("psycopg", "postgres", "a StartupMessage"),
    ("redis-py", "redis", "a RESP command (HELLO)"),
    ("redis-py-resp2", "redis", "a RESP command"),
    ("urllib3", "http", "an HTTP/1.x request line and Host header"),
    ("ssl", "tls", "a TLS ClientHello with SNI"),
    ("confluent-kafka", "kafka", "an ApiVersions request"),
])
def test_real_client_bytes_are_recognised(captured, client, protocol, source):
    data = captured[client]
    assert data, f"{client} sent nothing to the recording listener"
    found = recognise(data)
    assert found is not None and found.protocol == protocol, (client, data[:64], found)
    assert found.source.startswith(source)


def test_hosts_come_from_the_host_header_and_sni(captured):
    assert recognise(captured["urllib3"]).host == "billing.internal:8080"
    assert recognise(captured["ssl"]).host == "api.example.test"


def test_no_secret_reaches_a_recognition(captured):
    for client in ("psycopg2", "psycopg", "redis-py"):
        text = repr(recognise(captured[client]))
        assert "hunter2" not in text and "sekret" not in text and "app" not in text


def test_every_truncation_is_safe(captured):
    """A first send cut short anywhere: never an exception, never another protocol."""
    for client, data in captured.items():
        whole = recognise(data).protocol
        for n in range(len(data) + 1):
            found = recognise(data[:n])
            assert found is None or found.protocol == whole, (client, n, found)


def test_garbage_never_crashes_nor_names_with_certainty():
    rng = random.Random(25)
    named = 0
    for _ in range(3000):
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        for transport in ("tcp", "udp"):
            found = recognise(blob, transport)
            named += found is not None and found.protocol != AMBIGUOUS
    assert named < 30  # random bytes rarely look like a protocol at all


def test_shared_prefix_is_ambiguous():
    # "get k" is a Redis inline GET and a memcached get alike
    found = recognise(b"get session:1\r\n")
    assert found.protocol == AMBIGUOUS and found.candidates == ("memcached", "redis")
    assert recognise(b"PING\r\n").protocol == "redis"       # memcached has no PING
    assert recognise(b"stats\r\n").protocol == "memcached"  # Redis has no STATS


# Hand-built: no client library for these protocols is installed here. Each is built from
# the protocol's specification, field by field.
def _clickhouse_hello() -> bytes:
    name = b"ClickHouse python-driver"
    return (b"\x00" + bytes([len(name)]) + name + b"\x14\x0a" + b"\xd4\xa9\x03"  # 54484
            + b"\x07default" + b"\x07default" + b"\x00")


def _mongo_op_msg() -> bytes:
    body = b"\x00\x00\x00\x00" + b"\x00" + b"\x13\x00\x00\x00\x10hello\x00\x01\x00\x00\x00\x00"
    return struct.pack("<iiii", 16 + len(body), 1, 0, 2013) + body


def _zookeeper_connect() -> bytes:
    body = struct.pack(">iqiqi", 0, 0, 30000, 0, 16) + b"\x00" * 16 + b"\x00"
    return struct.pack(">i", len(body)) + body


def _dns_query() -> bytes:
    return (struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
            + b"\x08postgres\x02ci\x00" + struct.pack(">HH", 1, 1))


@pytest.mark.parametrize("data, transport, protocol", [
    (struct.pack(">II", 8, 80877104), "tcp", "postgres"),   # GSSENCRequest (no Kerberos here)
    (_clickhouse_hello(), "tcp", "clickhouse"),
    (b"set k 0 60 5\r\nhello\r\n", "tcp", "memcached"),
    (b"\x80\x00\x00\x03\x00\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00" + b"\x00" * 8
     + b"key", "tcp", "memcached"),
    (_mongo_op_msg(), "tcp", "mongodb"),
    (b"AMQP\x00\x00\x09\x01", "tcp", "amqp"),
    (_zookeeper_connect(), "tcp", "zookeeper"),
    (b"checkout.latency:320|ms|@0.5\n", "udp", "statsd"),
    (_dns_query(), "udp", "dns"),
    (struct.pack(">H", len(_dns_query())) + _dns_query(), "tcp", "dns"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "tcp", "http2"),
])
def test_hand_built_first_bytes(data, transport, protocol):
    found = recognise(data, transport)
    assert found is not None and found.protocol == protocol, found
    for n in range(len(data) + 1):  # and safe when cut short
        cut = recognise(data[:n], transport)
        assert cut is None or cut.protocol == protocol, (n, cut)


def test_a_mock_http_server_is_not_clickhouse():
    found = recognise(b"POST / HTTP/1.1\r\nHost: localhost:9000\r\n\r\n")
    assert found.protocol == "http" and found.host == "localhost:9000"


def test_one_recogniser_per_protocol():
    names = [name for name, _ in RECOGNISERS]
    assert len(names) == len(set(names)) == 13
