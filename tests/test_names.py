"""Host names: the strict DNS parser, the name table's join, rules by name (pure core)."""
from __future__ import annotations

import random
import struct

import pytest

from svctrace.config import Config
from svctrace.events import Destination, Event, Lookup, Marker, RunInfo
from svctrace.join.attribution import Attributor
from svctrace.join.dns import parse_reply, split_stream
from svctrace.join.names import NameTable, first_label_service
from svctrace.join.services import RuleError, ServiceMap, parse_rule
from svctrace.report.build import build_report
from tests.support.dns import build_reply, encode_name

SERVER = Destination("inet", "udp", "10.231.1.2", 53)
TABLE = {"cache.ci": "127.0.0.1", "pg.ci": "cname:db.svc.ci", "db.svc.ci": "cname:x.ci",
         "x.ci": ["10.0.0.1", "10.0.0.2"], "mystery.ci": "10.231.1.3",
         "loop.ci": "cname:loop2.ci", "loop2.ci": "cname:loop.ci"}


def query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + \
        struct.pack("!HH", qtype, 1)


def reply(name: str, qtype: int = 1) -> bytes:
    return build_reply(query(name, qtype), TABLE)


# -- the parser -----------------------------------------------------------------------------
def test_a_reply_names_its_question_and_addresses():
    parsed = parse_reply(reply("cache.ci"))
    assert (parsed.question, parsed.addresses, parsed.aliases) == ("cache.ci", ("127.0.0.1",), ())
    assert parsed.qid == 0x1234 and not parsed.truncated and not parsed.partial


def test_a_cname_chain_is_followed_to_the_addresses_of_its_end():
    parsed = parse_reply(reply("pg.ci"))
    assert parsed.aliases == ("db.svc.ci", "x.ci")
    assert parsed.addresses == ("10.0.0.1", "10.0.0.2")


def test_a_cname_loop_ends_and_gives_no_address():
    parsed = parse_reply(reply("loop.ci"))
    assert parsed.addresses == () and parsed.aliases == ("loop2.ci",)


def test_an_aaaa_reply_without_records_and_nxdomain_give_no_addresses():
    assert parse_reply(reply("cache.ci", qtype=28)).addresses == ()
    assert parse_reply(reply("nope.ci")).addresses == ()


def test_a_query_and_garbage_are_not_replies():
    assert parse_reply(query("cache.ci")) is None
    assert parse_reply(b"") is None
    assert parse_reply(b"\xff" * 40) is None
    assert parse_reply(b"HTTP/1.1 200 OK\r\n\r\n") is None


def test_records_of_other_names_are_not_the_questions():
    data = bytearray(reply("cache.ci"))
    # a second answer, for another owner name (written in full), must not be taken
    data[7] += 1
    data += encode_name("evil.ci") + struct.pack("!HHIH", 1, 1, 60, 4) + bytes([6, 6, 6, 6])
    assert parse_reply(bytes(data)).addresses == ("127.0.0.1",)


def test_every_cut_of_a_reply_is_partial_or_refused_never_a_crash():
    full = reply("pg.ci")
    for cut in range(len(full)):
        parsed = parse_reply(full[:cut])
        if parsed is not None:  # read up to a whole record: what it says is true
            assert set(parsed.addresses) <= {"10.0.0.1", "10.0.0.2"}
            assert parsed.partial or parsed.addresses == ("10.0.0.1", "10.0.0.2")


def test_compression_pointer_loops_and_forward_pointers_are_refused():
    data = bytearray(reply("cache.ci"))
    loop = bytes(data[:12]) + b"\xc0\x0c" + bytes(data[-20:])  # the question points at itself
    assert parse_reply(loop) is None
    forward = bytes(data[:12]) + b"\xc0\x40" + b"\0" * 80
    assert parse_reply(forward) is None


def test_random_bytes_never_crash_the_parser():
    rng = random.Random(25)
    base = reply("pg.ci")
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        parse_reply(bytes(data))  # must not raise
        parse_reply(bytes(rng.randrange(256) for _ in range(rng.randrange(64))))


def test_the_tc_bit_marks_a_reply_truncated():
    data = bytearray(reply("cache.ci"))
    data[2] |= 0x02
    assert parse_reply(bytes(data)).truncated


def test_a_tcp_stream_splits_into_messages():
    one, two = reply("cache.ci"), reply("pg.ci")
    stream = struct.pack("!H", len(one)) + one + struct.pack("!H", len(two)) + two
    assert split_stream(stream) == [one, two]


# -- the join --------------------------------------------------------------------------------
def dns(ts, name, pid=100, tid=None, stream=False):
    return Lookup("dns", ts, None, pid, tid or pid, server=SERVER, payload=reply(name),
                  stream=stream)


def dest(address, port):
    return Destination("inet", "tcp", address, port)


def test_a_connect_takes_the_name_its_thread_resolved_last():
    table = NameTable()
    table.add(dns(10, "cache.ci", tid=101), 10, 100)
    table.add(dns(20, "mystery.ci", tid=102), 20, 100)
    table.add(Lookup("nss", 30, None, 100, 102, name="pg.local", addresses=("127.0.0.1",)),
              30, 100)
    local = dest("127.0.0.1", 6379)
    assert [n.name for n in table.names_for(local, 40, 100, 100, 101)] == ["cache.ci"]
    assert [n.name for n in table.names_for(local, 40, 100, 100, 102)] == ["pg.local"]
    # another process of the tree: both names remain, reported as ambiguous
    assert [n.name for n in table.names_for(local, 40, 100, 200, 201)] == ["cache.ci",
                                                                            "pg.local"]
    # before any lookup, no name
    assert table.names_for(local, 5, 100, 100, 101) == ()


def test_getaddrinfo_passing_a_dns_reply_on_keeps_dns_as_how_it_was_learned():
    table = NameTable()
    table.add(dns(10, "cache.ci"), 10, 100)
    table.add(Lookup("nss", 12, None, 100, 100, name="cache.ci", addresses=("127.0.0.1",)),
              12, 100)
    table.add(Lookup("nss", 14, None, 100, 100, name="files.ci", addresses=("10.0.0.9",)),
              14, 100)
    # an address given to getaddrinfo is not a name
    table.add(Lookup("nss", 15, None, 100, 100, name="10.0.0.9", addresses=("10.0.0.9",)),
              15, 100)
    assert table.summary() == {"cache.ci": {"addresses": ["127.0.0.1"], "how": ["dns"]},
                               "files.ci": {"addresses": ["10.0.0.9"], "how": ["nss"]}}


def test_a_repeated_lookup_keeps_one_entry_and_the_newest_wins():
    table = NameTable()
    for ts in range(10, 10010, 10):
        table.add(Lookup("nss", ts, None, 100, 101, name="localhost",
                         addresses=("127.0.0.1",)), ts, 100)
    table.add(Lookup("nss", 20000, None, 100, 101, name="cache.ci", addresses=("127.0.0.1",)),
              20000, 100)
    table.add(Lookup("nss", 30000, None, 100, 101, name="localhost",
                     addresses=("127.0.0.1",)), 30000, 100)
    assert len(table._by_address["127.0.0.1"]) == 2
    local = dest("127.0.0.1", 5432)
    assert [n.name for n in table.names_for(local, 25000, 100, 100, 101)] == ["cache.ci"]
    assert [n.name for n in table.names_for(local, 35000, 100, 100, 101)] == ["localhost"]


def test_sends_take_the_names_of_their_connection():
    table = NameTable()
    table.add(dns(10, "cache.ci", tid=101), 10, 100)
    local = dest("127.0.0.1", 6379)
    table.names_for(local, 11, 100, 100, 101, "connect")
    table.add(dns(20, "other.ci", tid=101), 20, 100)  # same address, later, same thread
    assert [n.name for n in table.names_for(local, 30, 100, 100, 101, "send")] == ["cache.ci"]


def test_a_dns_reply_over_tcp_in_two_reads_is_joined():
    table = NameTable()
    message = reply("cache.ci")
    framed = struct.pack("!H", len(message)) + message
    for ts, part in ((10, framed[:2]), (11, framed[2:])):
        table.add(Lookup("dns", ts, None, 100, 100, server=SERVER, payload=part, stream=True),
                  ts, 100)
    assert table.summary() == {"cache.ci": {"addresses": ["127.0.0.1"], "how": ["dns"]}}


def test_first_label_service():
    services = {"clickhouse", "kafka", "redis"}
    assert first_label_service("clickhouse.ci", services) == "clickhouse"
    assert first_label_service("kafka-1", services) == "kafka"
    assert first_label_service("kafka1.svc", services) == "kafka"
    assert first_label_service("mystery.ci", services) is None
    assert first_label_service("redisx.ci", services) is None


# -- rules by name ---------------------------------------------------------------------------
def test_host_rules_parse_and_match_observed_names_only():
    rule = parse_rule("kafka", "*.kafka.svc:*")
    assert rule.host_glob == "*.kafka.svc" and rule.ports is None
    assert parse_rule("kafka", "kafka:9092").ports == (9092, 9092)
    assert parse_rule("x", "10.0.0.5:80").host_glob is None  # an address stays an address
    with pytest.raises(RuleError):
        parse_rule("x", "cache.ci:http")
    smap = ServiceMap({"kafka": ["*.kafka.svc:*"], "cache": ["cache.ci"]},
                      ignore=["noise.ci"])
    d = dest("10.0.0.7", 7777)
    assert smap.classify(d) == "tcp:10.0.0.7:7777"  # svctrace never resolves names itself
    assert smap.classify(d, ("b-1.kafka.svc",)) == "kafka"
    assert smap.classify(d, ("cache.ci",)) == "cache"
    assert smap.classify(d, ("noise.ci",)) is None
    assert smap.classify(d, ("mystery.ci",)) == "tcp:mystery.ci:7777"
    assert smap.classify(d, ("clickhouse.ci",)) == "clickhouse"  # its first label
    assert smap.classify(d, ("a.ci", "b.ci")) == "tcp:10.0.0.7:7777"  # ambiguous: address
    assert smap.classify(dest("10.0.0.7", 6379), ("mystery.ci",)) == "redis"  # port default


def _markers(pid, nodeid, start, end):
    return [Marker(start, 0, pid, None, nodeid, "call", "start"),
            Marker(end, 0, pid, None, nodeid, "call", "end", "passed")]


def test_the_report_names_a_destination_by_the_name_its_test_resolved():
    cfg = Config()
    att = Attributor(cfg.service_map())
    records = _markers(100, "t.py::a", 1000, 2000) + [
        dns(1100, "mystery.ci"),
        Event("connect", 1200, None, 100, 100, "python", dest("10.231.1.3", 7777), -111),
    ]
    for record in records:
        att.add(record)
    report = build_report(att.finish(), RunInfo("test"), cfg)
    test = report["tests"]["t.py::a"]
    assert test["services"] == ["tcp:mystery.ci:7777"]
    evidence = test["evidence"]["tcp:mystery.ci:7777"]
    assert evidence["by_destination"]["tcp:10.231.1.3:7777"]["names"] == [
        {"name": "mystery.ci", "how": "dns", "server": "udp:10.231.1.2:53"}]
    assert evidence["first"]["names"][0]["name"] == "mystery.ci"
    assert report["run"]["names"] == {"mystery.ci": {"addresses": ["10.231.1.3"],
                                                     "how": ["dns"]}}


# -- the views -------------------------------------------------------------------------------
def _report(records):
    cfg = Config()
    att = Attributor(cfg.service_map())
    for record in records:
        att.add(record)
    return build_report(att.finish(), RunInfo("test"), cfg)


def test_explain_and_summary_say_the_name_the_test_used_and_how_it_was_learned():
    from svctrace.views.explain import explain_one
    from svctrace.views.summary import format_summary
    report = _report(_markers(100, "t.py::a", 1000, 2000) + [
        dns(1100, "cache.ci"),
        Event("connect", 1200, None, 100, 100, "python", dest("127.0.0.1", 6379), 0)])
    text = explain_one(report, "t.py::a")
    assert "to cache.ci:6379 (127.0.0.1, name from a DNS answer): 1 connect" in text
    summary = format_summary(report)
    assert "services by the names tests used: redis at cache.ci:6379 (127.0.0.1" in summary
    assert "internet" not in summary


def test_a_destination_on_the_internet_is_marked_and_summarised():
    from svctrace.views.summary import format_summary
    # synthetic events only: nothing is sent anywhere
    report = _report(_markers(100, "t.py::a", 1000, 2000) + _markers(100, "t.py::b", 3000, 4000)
                     + [Lookup("nss", 1100, None, 100, 100, name="api.example.com",
                               addresses=("93.184.216.34",)),
                        Event("connect", 1200, None, 100, 100, "python",
                              dest("93.184.216.34", 443), 0),
                        Event("connect", 3200, None, 100, 100, "python",
                              dest("10.0.0.8", 443), 0)])
    entry = report["tests"]["t.py::a"]["evidence"]["tcp:api.example.com:443"]
    assert entry["by_destination"]["tcp:93.184.216.34:443"]["internet"] is True
    private = report["tests"]["t.py::b"]["evidence"]["tcp:10.0.0.8:443"]
    assert "internet" not in private["by_destination"]["tcp:10.0.0.8:443"]
    summary = format_summary(report)
    assert "1 tests reach the internet" in summary
    assert "t.py::a: api.example.com:443 (93.184.216.34, name from getaddrinfo" in summary


def test_an_inprocess_lookup_crosses_the_marker_pipe_unchanged():
    from svctrace.capture import wire
    lookup = Lookup("nss", 10, 20, 100, 101, name="cache.ci", addresses=("127.0.0.1", "::1"))
    (line,) = wire.encode(lookup)
    assert wire.record_of(line) == lookup


def test_a_baseline_glob_covers_services_known_by_host_name():
    cfg = Config(baseline=["tcp:*.internal:*"])
    att = Attributor(cfg.service_map())
    for record in _markers(100, "t.py::a", 1000, 2000) + [
            dns(1100, "mystery.ci"),
            Lookup("nss", 1150, None, 100, 100, name="metrics.internal",
                   addresses=("10.0.0.9",)),
            Event("connect", 1200, None, 100, 100, "python", dest("10.231.1.3", 7777), 0),
            Event("connect", 1300, None, 100, 100, "python", dest("10.0.0.9", 9100), 0)]:
        att.add(record)
    test = build_report(att.finish(), RunInfo("test"), cfg)["tests"]["t.py::a"]
    assert test["services"] == ["tcp:metrics.internal:9100", "tcp:mystery.ci:7777"]
    assert test["needs"] == ["tcp:mystery.ci:7777"]
    assert test["baseline"] == ["tcp:metrics.internal:9100"]


def test_merging_reports_unions_the_names_they_resolved():
    from svctrace.report.merge import merge_reports
    one = _report(_markers(100, "t.py::a", 1000, 2000) + [dns(1100, "cache.ci")])
    two = _report(_markers(100, "t.py::b", 1000, 2000) + [
        Lookup("nss", 1100, None, 100, 100, name="cache.ci", addresses=("10.0.0.2",))])
    merged = merge_reports([one, two])
    assert merged["run"]["names"] == {"cache.ci": {"addresses": ["10.0.0.2", "127.0.0.1"],
                                                   "how": ["dns", "nss"]}}


def test_the_name_records_match_the_header():
    """struct svct_dns and struct svct_nss of bpf/svctrace.h against ebpf's decoders."""
    from pathlib import Path
    from svctrace.capture import ebpf
    from tests.support import cheader
    bpf = Path(ebpf.__file__).resolve().parents[3] / "bpf"
    header = cheader.parse((bpf / "svctrace.h").read_text())
    event = ebpf._EVENT.size
    dns_struct, nss_struct = header.structs["svct_dns"], header.structs["svct_nss"]
    assert dns_struct.padding() == 0 and nss_struct.padding() == 0
    assert ebpf._DNS.size == dns_struct.size and ebpf._NSS.size == nss_struct.size
    # the decoders' layouts: the head, then these fields at these offsets and sizes
    assert [(f.name, f.offset, f.size) for f in dns_struct.fields] == [
        ("head", 0, event), ("len", event, 2), ("stream", event + 2, 1),
        ("_pad", event + 3, 5), ("data", event + 8, 512)]
    assert [(f.name, f.offset, f.size) for f in nss_struct.fields] == [
        ("head", 0, event), ("naddr", event, 1), ("_pad", event + 1, 7),
        ("family", event + 8, 8), ("addr", event + 16, 128), ("name", event + 144, 256)]
    assert header.defines["SVCT_DNS_MAX"] == 512
    assert header.defines["SVCT_NSS_ADDR_BYTES"] == 16 * header.defines["SVCT_NSS_ADDRS"]
