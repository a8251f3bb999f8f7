"""In-process backend: a socket's first send carries its bytes, through the marker pipe's
wire protocol too, for protocol recognition (real redis-py, urllib3 and a UDP datagram)."""
from __future__ import annotations

import http.server
import socket
import threading

import pytest

from svctrace.capture import inprocess, wire
from svctrace.events import Event
from svctrace.join.protocols import recognise

redis = pytest.importorskip("redis")
urllib3 = pytest.importorskip("urllib3")


@pytest.fixture
def http_port():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_first_sends_carry_bytes_and_survive_the_wire(services, http_port):
    records: list = []
    inprocess.install(records.append)
    try:
        client = redis.Redis.from_url(services["redis_url"])
        client.ping()
        client.ping()
        urllib3.PoolManager().request("GET", f"http://127.0.0.1:{http_port}/", retries=False,
                                      headers={"Host": "billing.internal:8080"})
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.sendto(b"app.hits:1|c", ("127.0.0.1", 9))
        udp.sendto(b"app.hits:2|c", ("127.0.0.1", 9))
        udp.close()
    finally:
        inprocess.uninstall()
    sends = [r for r in records if isinstance(r, Event) and r.kind == "send"]
    # through the marker pipe's encoding and back, as the runner receives them
    decoded = [wire.record_of(line) for r in sends for line in wire.encode(r)]
    assert decoded == sends
    found = {r.dest.port: recognise(r.first_bytes, r.dest.transport)
             for r in decoded if r.first_bytes}
    assert found[services["redis_port"]].protocol == "redis"
    assert found[http_port].host == "billing.internal:8080"
    assert found[9].protocol == "statsd"
    redis_sends = [r for r in decoded if r.dest.port == services["redis_port"]]
    assert len(redis_sends) > 1 and sum(1 for r in redis_sends if r.first_bytes) == 1
    assert sum(1 for r in decoded if r.dest.port == 9 and r.first_bytes) == 1


def test_garbage_first_bytes_on_the_wire_is_a_protocol_error():
    line = wire.encode(Event("send", 1, 2, 3, 3, "python",
                             inprocess._destination(socket.socket(), ("127.0.0.1", 1)), 1,
                             first_bytes=b"x"))[0]
    bad = line.replace(b'"eA=="', b'"%%%"')
    with pytest.raises(wire.ProtocolError):
        wire.record_of(bad)
