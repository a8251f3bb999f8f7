"""Service naming and the contact rule on hand-written destinations (pure)."""
from __future__ import annotations

import errno

import pytest

from svctrace.config import Config
from svctrace.events import Destination
from svctrace.join.services import CONTACT, NOISE, PROBE, ServiceMap


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


def udp(addr: str, port: int) -> Destination:
    return Destination("inet6" if ":" in addr else "inet", "udp", addr, port)


def unix(path: str) -> Destination:
    return Destination("unix", "unix", path)


def unknown(addr: str, port: int) -> Destination:
    """An inet destination whose transport the backend could not tell (eBPF, before the
    TCP handshake)."""
    return Destination("inet", "other", addr, port)


@pytest.mark.parametrize("path", [
    "/run/uuidd/request", "/var/run/uuidd/request",          # uuid.uuid1() via libuuid
    "/var/run/nscd/socket", "/run/nscd/socket",              # glibc name-service cache
    "/dev/log", "/run/systemd/journal/socket", "/run/systemd/journal/dev-log",
    "/run/dbus/system_bus_socket", "/var/run/dbus/system_bus_socket",
    "/run/user/1000/bus", "@/tmp/dbus-AbCdEf",
    "/run/systemd/notify", "/run/systemd/userdb/io.systemd.DynamicUser",
    "/run/systemd/resolve/io.systemd.Resolve", "/var/lib/sss/pipes/nss",
    "/run/avahi-daemon/socket",
])
@pytest.mark.parametrize("defaults", [True, False])
def test_system_probes_are_noise_even_without_the_default_services(path, defaults):
    smap = ServiceMap(use_defaults=defaults)
    assert smap.classify(unix(path)) is None
    assert smap.judge("connect", unix(path), -errno.ENOENT).what == NOISE


def test_a_user_rule_naming_a_default_noise_path_makes_it_a_service():
    smap = ServiceMap({"dbus": ["unix:/run/dbus/system_bus_socket"]})
    assert smap.classify(unix("/run/dbus/system_bus_socket")) == "dbus"
    assert smap.classify(unix("/var/run/dbus/system_bus_socket")) is None
    # the user's own ignore list wins over everything
    both = ServiceMap({"dbus": ["unix:/run/dbus/*"]}, ignore=["unix:/run/dbus/system_bus*"])
    assert both.classify(unix("/run/dbus/system_bus_socket")) is None


def test_notify_socket_from_the_environment_is_noise(monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "@/org/freedesktop/systemd1/notify/42")
    assert Config().service_map().classify(unix("@/org/freedesktop/systemd1/notify/42")) is None
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/custom/notify.sock")
    assert Config().service_map().classify(unix("/run/custom/notify.sock")) is None
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert Config().service_map().classify(unix("/run/custom/notify.sock")) == \
        "unix:/run/custom/notify.sock"


def test_port_53_is_dns_over_udp_and_tcp():
    smap = ServiceMap()
    assert smap.classify(udp("10.0.0.2", 53)) == "dns"
    assert smap.classify(tcp("::1", 53)) == "dns"
    assert ServiceMap(use_defaults=False).classify(udp("10.0.0.2", 53)) == "udp:10.0.0.2:53"


# (kind, destination, result) -> (verdict, name, label): the one contact rule.
ENETUNREACH, ENOENT = -errno.ENETUNREACH, -errno.ENOENT
CONTACT_RULE = [
    # a UDP connect sends nothing; glibc connects UDP sockets to sort candidate addresses
    (("connect", udp("10.0.0.2", 53), 0), (NOISE, None, None)),
    # a lookup that could not leave the machine: evidence, not a need
    (("connect", udp("10.255.255.53", 53), ENETUNREACH), (PROBE, "dns", "10.255.255.53:53")),
    (("connect", unknown("10.255.255.53", 53), ENETUNREACH),
     (PROBE, "dns", "10.255.255.53:53")),
    (("send", udp("10.0.0.2", 53), 40), (CONTACT, "dns", "udp:10.0.0.2:53")),
    # unknown transport: a TCP-only outcome proves TCP; success is a UDP connect
    # refused where nothing names it (no rule, name or protocol): a failed probe
    (("connect", unknown("169.254.169.254", 80), -errno.ECONNREFUSED),
     (PROBE, "169.254.169.254:80", "169.254.169.254:80")),
    (("connect_result", tcp("127.0.0.1", 41234), -errno.ECONNREFUSED),
     (PROBE, "127.0.0.1:41234", "127.0.0.1:41234")),
    (("connect", unknown("10.0.0.5", 5432), -errno.EINPROGRESS),
     (CONTACT, "postgres", "tcp:10.0.0.5:5432")),
    (("connect", unknown("10.0.0.5", 8125), 0), (NOISE, None, None)),
    (("connect", tcp("169.254.169.254", 80), ENETUNREACH),
     (PROBE, "169.254.169.254:80", "169.254.169.254:80")),
    (("connect", unknown("169.254.169.254", 80), ENETUNREACH),
     (PROBE, "169.254.169.254:80", "169.254.169.254:80")),
    (("connect", tcp("10.0.0.5", 9092), -errno.ECONNREFUSED),
     (CONTACT, "kafka", "tcp:10.0.0.5:9092")),
    (("connect", tcp("10.0.0.5", 9092), -errno.ETIMEDOUT), (CONTACT, "kafka", "tcp:10.0.0.5:9092")),
    # unix: nobody listening at a path no rule names is a probe; at a named one, a need
    (("connect", unix("/run/app/missing.sock"), ENOENT),
     (PROBE, "unix:/run/app/missing.sock", "unix:/run/app/missing.sock")),
    (("connect", unix("/run/app/missing.sock"), -errno.ECONNREFUSED),
     (PROBE, "unix:/run/app/missing.sock", "unix:/run/app/missing.sock")),
    (("send", unix("/run/app/missing.sock"), ENOENT),
     (PROBE, "unix:/run/app/missing.sock", "unix:/run/app/missing.sock")),
    (("connect", unix("/run/app/app.sock"), 0),
     (CONTACT, "unix:/run/app/app.sock", "unix:/run/app/app.sock")),
    (("connect", unix("/tmp/pg/.s.PGSQL.5432"), ENOENT),
     (CONTACT, "postgres", "unix:/tmp/pg/.s.PGSQL.5432")),
    # IPv4-mapped IPv6 is the IPv4 address: rules written for it apply
    (("connect", tcp("::ffff:127.0.0.1", 6379), 0), (CONTACT, "redis", "tcp:127.0.0.1:6379")),
    (("send", Destination("netlink", "other", "ROUTE"), 20), (NOISE, None, None)),
]


@pytest.mark.parametrize("op,expected", CONTACT_RULE)
def test_the_contact_rule(op, expected):
    verdict = ServiceMap().judge(*op)
    assert (verdict.what, verdict.name, verdict.label) == expected


def test_unknown_transport_matches_transport_specific_rules_only_for_probes():
    smap = ServiceMap()
    assert smap.judge("connect", unknown("10.0.0.9", 8125), ENETUNREACH).name == "statsd"
    assert smap.judge("send", udp("10.0.0.9", 8125), 5).name == "statsd"
    assert smap.judge("send", tcp("10.0.0.9", 8125), 5).name == "tcp:10.0.0.9:8125"
