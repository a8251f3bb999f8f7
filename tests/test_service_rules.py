"""Service naming and the contact rule on hand-written destinations (pure)."""
from __future__ import annotations

from svctrace.events import Destination
from svctrace.services import ServiceMap


def tcp(addr: str, port: int) -> Destination:
    return Destination("inet6" if ":" in addr else "inet", "tcp", addr, port)


def test_precedence_host_port_then_cidr_port_then_port_then_host_then_cidr():
    # Listed least specific first: config order must not decide.
    smap = ServiceMap({"lan": ["10.0.0.0/8"], "box": ["10.1.2.3"], "web": ["8080"],
                       "lan-web": ["10.0.0.0/8:8080"], "box-web": ["10.1.2.3:8080"]},
                      use_defaults=False)
    assert smap.classify(tcp("10.1.2.3", 8080)) == "box-web"
    assert smap.classify(tcp("10.9.9.9", 8080)) == "lan-web"
    assert smap.classify(tcp("192.168.0.1", 8080)) == "web"
    assert smap.classify(tcp("10.1.2.3", 9)) == "box"
    assert smap.classify(tcp("10.9.9.9", 9)) == "lan"


def test_port_rule_beats_cidr_rule_within_the_defaults_and_within_user_rules():
    smap = ServiceMap({"lan": ["10.0.0.0/8"], "web": ["8080"]}, use_defaults=False)
    assert smap.classify(tcp("10.9.9.9", 8080)) == "web"
    # user rules still win over the built-in map as a whole
    user = ServiceMap({"lan": ["10.0.0.0/8"]})
    assert user.classify(tcp("10.9.9.9", 5432)) == "lan"
    assert user.classify(tcp("192.168.0.1", 5432)) == "postgres"


def test_narrower_network_and_port_range_win_at_the_same_level():
    smap = ServiceMap({"wide": ["10.0.0.0/8:7000-7005"], "narrow": ["10.1.0.0/16:7003"],
                       "any-range": ["7000-7010"], "one-port": ["7004"]},
                      use_defaults=False)
    assert smap.classify(tcp("10.1.0.1", 7003)) == "narrow"
    assert smap.classify(tcp("10.2.0.1", 7003)) == "wide"
    assert smap.classify(tcp("192.168.0.1", 7004)) == "one-port"
    assert smap.classify(tcp("192.168.0.1", 7006)) == "any-range"
