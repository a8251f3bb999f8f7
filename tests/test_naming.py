"""Naming destinations from what went over the wire: protocol, Host/SNI, the suite's own
listeners (join/naming.py, services.ServiceMap, attribution; pure)."""
from __future__ import annotations

import errno
import struct
from dataclasses import replace

from svctrace.config import Config
from svctrace.events import Destination, Event, ProcessEvent
from tests.test_attribution import attribute, windows_of

RESP = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"
STARTUP = struct.pack(">II", 27, 196608) + b"user\x00u\x00database\x00d\x00\x00"
KAFKA = b"\x00\x00\x00@\x00\x12\x00\x03\x00\x00\x00\x01\x00\x07rdkafka\x00"


def http(host: str) -> bytes:
    return f"GET /v1 HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\n\r\n".encode()


def client_hello(sni: str) -> bytes:
    name = sni.encode()
    ext = struct.pack(">HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    body = (b"\x03\x03" + b"\x00" * 32 + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
            + struct.pack(">H", len(ext)) + ext)
    hs = b"\x01" + struct.pack(">I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack(">H", len(hs)) + hs


def tcp(address: str, port: int) -> Destination:
    return Destination("inet", "tcp", address, port)


def contact(ts: int, dest: Destination, data: bytes | None, pid: int = 100) -> list:
    """A connect, then the first send carrying its bytes."""
    return [Event("connect", ts, None, pid, pid, "python", dest, -errno.EINPROGRESS),
            Event("send", ts + 1, None, pid, pid, "python", dest, len(data or b"x"),
                  first_bytes=data)]


def services_of(records, cfg: Config | None = None) -> tuple[dict, dict]:
    report = attribute(windows_of(100, "t.py::a", 1000) + records, cfg)
    return report["tests"]["t.py::a"], report


def test_protocol_names_a_destination_on_a_port_of_its_own():
    test, report = services_of(contact(1021, tcp("127.0.0.1", 16379), RESP)
                               + contact(1023, tcp("127.0.0.1", 15432), STARTUP)
                               + contact(1025, tcp("127.0.0.1", 29092), KAFKA))
    assert test["services"] == ["kafka", "postgres", "redis"]
    # the connect before the first send is named alike: one service, not two
    assert test["evidence"]["redis"]["connects"] == 1
    assert report["destinations"]["tcp:127.0.0.1:16379"] == {
        "service": "redis", "protocol": "redis", "connections": 1,
        "recognised_from": "a RESP command (HELLO)"}


def test_http_and_tls_are_named_after_the_host_asked_for():
    test, report = services_of(
        contact(1021, tcp("127.0.0.5", 8080), http("billing.internal:8080"))
        + contact(1023, tcp("127.0.0.9", 443), client_hello("api.example.test"))
        + contact(1025, tcp("127.0.0.10", 8443), client_hello("auth.example.test"))
        + contact(1027, tcp("127.0.0.11", 80), http("www.example.test")))
    assert test["services"] == ["api.example.test", "auth.example.test:8443",
                                "billing.internal:8080", "www.example.test"]
    assert report["destinations"]["tcp:127.0.0.9:443"]["hosts"] == ["api.example.test"]
    assert report["destinations"]["tcp:127.0.0.9:443"]["recognised_from"] == \
        "a TLS ClientHello with SNI"


def test_a_mock_http_server_on_9000_is_not_clickhouse_but_http_on_8123_is():
    test, _ = services_of(contact(1021, tcp("127.0.0.1", 9000), http("127.0.0.1:9000"))
                          + contact(1023, tcp("127.0.0.1", 8123), http("localhost:8123")))
    assert test["services"] == ["clickhouse", "http:127.0.0.1:9000"]
    assert test["evidence"]["clickhouse"]["destinations"] == ["tcp:127.0.0.1:8123"]


def test_a_user_rule_wins_over_the_protocol():
    cfg = Config(services={"cache": ["127.0.0.1:16379"]})
    test, _ = services_of(contact(1021, tcp("127.0.0.1", 16379), RESP), cfg)
    assert test["services"] == ["cache"]


def test_ambiguous_bytes_fall_back_to_the_port_and_say_so():
    test, report = services_of(contact(1021, tcp("127.0.0.1", 11211), b"get k\r\n")
                               + contact(1023, tcp("127.0.0.1", 4000), b"get k\r\n"))
    assert test["services"] == ["memcached", "tcp:127.0.0.1:4000"]
    entry = report["destinations"]["tcp:127.0.0.1:4000"]
    assert entry["protocol"] == "ambiguous" and entry["candidates"] == ["memcached", "redis"]


def test_connections_that_disagree_make_a_destination_ambiguous():
    dest = tcp("127.0.0.1", 4000)
    test, report = services_of(contact(1021, dest, RESP) + contact(1023, dest, STARTUP))
    assert test["services"] == ["tcp:127.0.0.1:4000"]
    assert report["destinations"]["tcp:127.0.0.1:4000"]["candidates"] == ["postgres", "redis"]


def test_no_captured_bytes_reach_the_report():
    secret = STARTUP.replace(b"user\x00u", b"user\x00hunter2")
    _, report = services_of(contact(1021, tcp("127.0.0.1", 15432), secret)
                            + contact(1023, tcp("127.0.0.1", 6380),
                                      b"*2\r\n$4\r\nAUTH\r\n$7\r\nsekret!\r\n"))
    text = repr(report)
    assert "hunter2" not in text and "sekret" not in text


def _listen(ts: int, pid: int, port: int, address: str = "127.0.0.1") -> list:
    return [ProcessEvent("fork", ts, None, pid, 100),
            Event("listen", ts + 1, None, pid, pid, "helper", tcp(address, port))]


def test_the_suites_own_listener_recognised_is_its_service_and_needs_no_tier():
    test, report = services_of(_listen(1005, 300, 40135)
                               + contact(1021, tcp("127.0.0.1", 40135), RESP))
    assert test["services"] == ["redis"] and test["suite_started"] == ["redis"]
    assert test["needs"] == []
    assert report["destinations"]["tcp:127.0.0.1:40135"]["suite_listener"] is True


def test_the_suites_own_listener_unrecognised_is_no_service():
    test, report = services_of(_listen(1005, 300, 40135, "0.0.0.0")
                               + contact(1021, tcp("127.0.0.1", 40135), b"\x05\x01\x00"))
    assert test["services"] == [] and test["needs"] == []
    assert test["ignored"] == {"suite_listener": {"tcp:127.0.0.1:40135": 2}}
    assert report["run"]["events"]["suite_listener"] == 2


def test_a_suite_service_also_reached_outside_stays_a_need():
    test, _ = services_of(_listen(1005, 300, 40135)
                          + contact(1021, tcp("127.0.0.1", 40135), RESP)
                          + contact(1023, tcp("127.0.0.1", 6379), RESP))
    assert test["services"] == ["redis"] and test["needs"] == ["redis"]
    assert test["suite_started"] == []


def test_a_servers_own_first_reply_teaches_nothing():
    # the listener's reply on an accepted socket: local port = its listening port
    reply = Event("send", 1022, None, 300, 300, "helper", tcp("127.0.0.1", 51000), 5,
                  40135, first_bytes=b"+OK\r\n")
    _, report = services_of(_listen(1005, 300, 40135) + [reply])
    assert report["destinations"] == {}


def test_refused_where_a_protocol_was_seen_stays_a_contact():
    dest = tcp("127.0.0.1", 16379)
    refused = Event("connect", 1025, None, 100, 100, "python", dest, -errno.ECONNREFUSED)
    test, _ = services_of(contact(1021, dest, RESP) + [refused])
    assert test["services"] == ["redis"] and test["failed_probes"] == {}
    assert test["evidence"]["redis"]["failed_connects"] == 1


def test_unconnected_udp_first_datagram_names_statsd():
    dest = Destination("inet", "udp", "127.0.0.1", 18125)
    send = Event("send", 1021, None, 100, 100, "python", dest, 10,
                 first_bytes=b"app.hits:1|c")
    test, _ = services_of([send, replace(send, mono_ns=1022, first_bytes=None)])
    assert test["services"] == ["statsd"]


def test_explain_summary_and_html_say_how_a_destination_is_known():
    from svctrace.views.explain import explain_one
    from svctrace.views.html import build_page
    from svctrace.views.summary import format_summary
    _, report = services_of(_listen(1005, 300, 40135)
                            + contact(1021, tcp("127.0.0.1", 16379), RESP)
                            + contact(1023, tcp("127.0.0.1", 40135), KAFKA))
    text = explain_one(report, "t.py::a")
    assert "redis at 127.0.0.1:16379, recognised from a RESP command (HELLO)" in text
    assert ("kafka at 127.0.0.1:40135, recognised from an ApiVersions request (v3); "
            "a listener of the traced suite itself") in text
    assert "started by the suite itself, not needs" in text and "kafka" in text
    summary = format_summary(report)
    assert "named from their traffic: redis at 127.0.0.1:16379" in summary
    assert "started by the suite itself (its own listeners; not needs): kafka in 1 tests" \
        in summary
    assert "recognised from a RESP command (HELLO)" in build_page(report)


def test_merge_unions_destinations_and_suite_started():
    from svctrace.report.merge import merge_reports
    _, one = services_of(contact(1021, tcp("127.0.0.1", 16379), RESP))
    _, two = services_of(_listen(1005, 300, 40135)
                         + contact(1021, tcp("127.0.0.1", 40135), KAFKA))
    merged = merge_reports([one, two])
    assert sorted(merged["destinations"]) == ["tcp:127.0.0.1:16379", "tcp:127.0.0.1:40135"]
    assert merged["destinations"]["tcp:127.0.0.1:40135"]["suite_listener"] is True
    test = merged["tests"]["t.py::a"]
    assert test["services"] == ["kafka", "redis"] and test["suite_started"] == ["kafka"]
    assert test["needs"] == ["redis"]
    assert merge_reports([merged, one]) == merge_reports([one, two])


def test_a_nonblocking_connect_refused_later_is_one_failed_probe():
    """eBPF reports EINPROGRESS, then the refusal: the connect takes the refusal, so an
    unnamed destination is a failed probe only, and a named one a failed contact."""
    def refused(ts, dest):
        return [Event("connect", ts, None, 100, 100, "python", dest, -errno.EINPROGRESS),
                Event("connect_result", ts, None, 100, 100, "python", dest,
                      -errno.ECONNREFUSED)]
    test, report = services_of(refused(1021, tcp("127.0.0.1", 41234))
                               + refused(1023, tcp("127.0.0.1", 5432)))
    assert test["services"] == ["postgres"] and list(test["failed_probes"]) == [
        "127.0.0.1:41234"]
    pg = test["evidence"]["postgres"]
    assert (pg["connects"], pg["failed_connects"], pg["first"]["result"]) == (1, 1, "refused")
    probe = test["failed_probes"]["127.0.0.1:41234"]
    assert (probe["connects"], probe["failed_connects"]) == (1, 1)


def test_a_refused_connect_known_only_as_localhost_is_a_failed_probe():
    from svctrace.join.services import PROBE, ServiceMap
    smap, dest = ServiceMap(), tcp("127.0.0.1", 41234)
    verdict = smap.judge("connect", dest, -errno.ECONNREFUSED, ("localhost",))
    assert verdict.what == PROBE
    named = smap.judge("connect", dest, -errno.ECONNREFUSED, ("mystery.ci",))
    assert (named.what, named.name) == ("contact", "tcp:mystery.ci:41234")
