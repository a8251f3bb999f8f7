"""Service map: destination -> service name, from defaults plus user rules (pure)."""
from __future__ import annotations

import errno
import fnmatch
import glob
import ipaddress
import re
from dataclasses import dataclass, replace
from typing import Mapping

from svctrace.events import Destination
from svctrace.join.evidence import internet
from svctrace.join.names import first_label_service, named_label
from svctrace.join.naming import Wire, host_name
from svctrace.join.protocols import AMBIGUOUS

# The default service map (README "Configuration"). Users extend/override it in
# [tool.svctrace.services].
DEFAULT_SERVICES: dict[str, tuple[str, ...]] = {
    "postgres": ("5432", "unix:*/.s.PGSQL.*"),
    "redis": ("6379",),
    "redis-cluster": ("7000-7005",),
    "kafka": ("9092",),
    "zookeeper": ("2181",),
    "clickhouse": ("8123", "9000"),
    "snuba": ("1218",),
    "memcached": ("11211",),
    "rabbitmq": ("5672",),
    "mysql": ("3306",),
    "mongodb": ("27017",),
    "elasticsearch": ("9200",),
    "statsd": ("8125/udp",),
    "symbolicator": ("3021",),
    "dns": ("53",),  # a resolver (udp and tcp); README "Attribution rules" says when it is a need
}
# Protocols recognised from a client's first bytes (join/protocols.py) -> service name.
# HTTP, HTTP/2 and TLS are no one service: they are named after the host the client asked
# for (protocol_name below).
PROTOCOL_SERVICES = {"postgres": "postgres", "redis": "redis", "kafka": "kafka",
                     "clickhouse": "clickhouse", "memcached": "memcached",
                     "mongodb": "mongodb", "amqp": "rabbitmq", "zookeeper": "zookeeper",
                     "statsd": "statsd", "dns": "dns"}
_HOST_NAMED = {"http": 80, "http2": 80, "tls": 443}  # protocol -> the scheme's own port
# What each default rule's port speaks: a recognised protocol keeps the default name only
# where it fits ("redis" on 7001 stays redis-cluster; a mock HTTP server on 9000, the
# native ClickHouse port, is not clickhouse). TLS fits every port: it wraps anything.
DEFAULT_PROTOCOLS: dict[str, frozenset] = {
    "5432": frozenset({"postgres"}), "6379": frozenset({"redis"}),
    "7000-7005": frozenset({"redis"}), "9092": frozenset({"kafka"}),
    "2181": frozenset({"zookeeper"}), "8123": frozenset({"http", "clickhouse"}),
    "9000": frozenset({"clickhouse"}), "1218": frozenset({"http"}),
    "11211": frozenset({"memcached"}), "5672": frozenset({"amqp"}),
    "3306": frozenset(), "27017": frozenset({"mongodb"}), "9200": frozenset({"http"}),
    "8125/udp": frozenset({"statsd"}), "3021": frozenset({"http"}),
    "53": frozenset({"dns"}),
}
# Sockets that libraries and the C library probe on their own: none is a service a CI job
# starts. The one list of default noise for every backend (a user rule naming one of
# these paths makes it a service again).
DEFAULT_IGNORE: tuple[str, ...] = (
    "unix:/var/run/nscd/socket", "unix:/run/nscd/socket",        # glibc name-service cache
    "unix:/run/uuidd/request", "unix:/var/run/uuidd/request",    # libuuid: uuid.uuid1()
    "unix:/dev/log", "unix:/run/systemd/journal/*",              # syslog(3), journald
    "unix:/run/dbus/system_bus_socket", "unix:/var/run/dbus/system_bus_socket",
    "unix:/run/user/*/bus", "unix:@/tmp/dbus-*",                 # D-Bus session bus
    "unix:/run/systemd/notify", "unix:/run/user/*/systemd/notify",  # sd_notify(3)
    "unix:/run/systemd/userdb/*",                                # nss-systemd user lookups
    "unix:/run/systemd/resolve/io.systemd.Resolve*",             # nss-resolve (varlink)
    "unix:/var/lib/sss/pipes/*",                                 # nss_sss
    "unix:/run/avahi-daemon/socket", "unix:/var/run/avahi-daemon/socket",  # nss-mdns
)
# Families that are never an external service (kernel netlink, packet sockets...).
IGNORED_FAMILIES = frozenset({"netlink", "other"})


class RuleError(ValueError):
    """A service rule string cannot be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class Rule:
    """One way of recognising a service: unix glob, or network/ports/transport for inet."""

    name: str
    spec: str
    unix_glob: str | None = None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ports: tuple[int, int] | None = None
    transport: str | None = None  # "tcp" | "udp" | None (either)
    # A host name or glob ("kafka", "*.kafka.svc"): matches the names the run observed for
    # a destination (join/names.py), never a resolution of svctrace's own.
    host_glob: str | None = None

    @property
    def specificity(self) -> tuple:
        """Sort key, larger first: rules with a port (host:port, then CIDR:port, then port
        alone) before rules without one (CIDR alone); then the narrower network, the
        narrower port range, and a rule tied to a transport."""
        # a host name is narrower than any address range: it names one service
        prefix = 129 if self.host_glob is not None else \
            self.network.prefixlen if self.network is not None else -1
        width = self.ports[1] - self.ports[0] if self.ports else 0
        return (self.ports is not None, prefix, -width, self.transport is not None)

    def _transport_and_port_match(self, dest: Destination) -> bool:
        # A backend that could not tell the transport ("other") matches either: only probes
        # keep such a destination (the contact rule settles it for contacts).
        if self.transport and dest.transport in ("tcp", "udp") \
                and dest.transport != self.transport:
            return False
        return not self.ports or (dest.port is not None
                                  and self.ports[0] <= dest.port <= self.ports[1])

    def matches_name(self, dest: Destination, names: tuple[str, ...]) -> bool:
        """A host rule: one of the names observed for dest matches (and its port)."""
        if self.host_glob is None or not names or dest.family not in ("inet", "inet6"):
            return False
        if not self._transport_and_port_match(dest):
            return False
        return any(fnmatch.fnmatchcase(name, self.host_glob) for name in names)

    def matches(self, dest: Destination) -> bool:
        if self.host_glob is not None:
            return False  # only by name: see matches_name
        if self.unix_glob is not None:
            return dest.family == "unix" and fnmatch.fnmatchcase(dest.address, self.unix_glob)
        if dest.family not in ("inet", "inet6"):
            return False
        if not self._transport_and_port_match(dest):
            return False
        if self.network is not None:
            try:
                addr = ipaddress.ip_address(dest.address)
            except ValueError:
                return False
            if addr.version != self.network.version or addr not in self.network:
                return False
        return True


def _port_range(text: str, spec: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        low, high = int(lo), int(hi) if sep else int(lo)
    except ValueError:
        raise RuleError(f"{spec!r}: {text!r} is not a port or port range") from None
    if not (0 < low <= high <= 65535):
        raise RuleError(f"{spec!r}: ports must be within 1-65535 (low-high)")
    return low, high


def _network(text: str, spec: str):
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise RuleError(f"{spec!r}: {text!r} is not an IP address, CIDR or host name"
                        ) from None


_HOST = re.compile(r"[a-z0-9*?_\[\]-]+(\.[a-z0-9*?_\[\]-]+)*\.?")


def _host_rule(name: str, spec: str, host: str, port: str | None,
               transport: str | None) -> Rule | None:
    """A rule by host name or glob ("kafka:9092", "*.kafka.svc:*", "cache.ci"), or None
    when `host` is an address (a CIDR rule)."""
    lowered = host.lower()
    if not _HOST.fullmatch(lowered) or lowered.replace(".", "").replace("/", "").isdigit():
        return None
    try:
        ipaddress.ip_network(host, strict=False)
        return None
    except ValueError:
        pass
    ports = None if port in (None, "*") else _port_range(port, spec)
    return Rule(name, spec, ports=ports, transport=transport,
                host_glob=lowered.rstrip("."))


def parse_rule(name: str, spec: str) -> Rule:
    """Parse one rule: "5432", "7000-7005", "8125/udp", "10.0.0.5:8080", "[::1]:5432",
    "10.0.0.0/8", "10.0.0.0/8:9092", "unix:/run/*.sock", and by the host names the run
    observed: "kafka:9092", "*.kafka.svc:*", "cache.ci" (any port)."""
    if not isinstance(spec, str) or not spec.strip():
        raise RuleError(f"{spec!r}: a rule must be a non-empty string")
    text = spec.strip()
    if text.startswith("unix:"):
        glob = text[5:]
        if not glob:
            raise RuleError(f"{spec!r}: unix: needs a path or glob")
        return Rule(name, spec, unix_glob=glob)
    transport = None
    for suffix in ("/udp", "/tcp"):
        if text.lower().endswith(suffix):
            transport, text = suffix[1:], text[: -len(suffix)]
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        if not sep or (port and not port.startswith(":")):
            raise RuleError(f"{spec!r}: expected [ipv6]:port")
        return Rule(name, spec, network=_network(host, spec),
                    ports=_port_range(port[1:], spec) if port else None, transport=transport)
    if text.replace("-", "").isdigit():
        return Rule(name, spec, ports=_port_range(text, spec), transport=transport)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        by_name = _host_rule(name, spec, host, port, transport)
        if by_name is not None:
            return by_name
        return Rule(name, spec, network=_network(host, spec),
                    ports=_port_range(port, spec), transport=transport)
    by_name = _host_rule(name, spec, text, None, transport)
    if by_name is not None:
        return by_name
    return Rule(name, spec, network=_network(text, spec), transport=transport)


def environment_noise(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Noise rules only the environment knows: sd_notify's $NOTIFY_SOCKET."""
    path = environ.get("NOTIFY_SOCKET", "")
    if path.startswith(("/", "@")):  # "vsock:..." is not a unix socket
        return ("unix:" + glob.escape(path),)
    return ()


CONTACT, PROBE, NOISE = "contact", "probe", "noise"
# Names of the loopback address itself (/etc/hosts): they name no service
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                             "ip6-loopback"})
DENIED = "denied"  # the guard refused it: the test tried a service, so it needs it
# Failed before anything left this machine: no route, no such local address, or refused by
# local policy (firewall, cgroup). Nothing was reached, whatever the transport.
_LOCAL_FAILURES = frozenset(-e for e in (
    errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EADDRNOTAVAIL,
    errno.EAFNOSUPPORT, errno.EPERM, errno.EACCES))
# Outcomes only a TCP connect can have: the handshake started. eBPF reports the transport of
# an inet connect it saw no handshake for as "other"; these settle it.
_TCP_ONLY = frozenset(-e for e in (errno.EINPROGRESS, errno.EALREADY, errno.ECONNREFUSED,
                                   errno.ETIMEDOUT, errno.ECONNRESET))
_NO_LISTENER = frozenset((-errno.ENOENT, -errno.ECONNREFUSED))  # at a unix path


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one socket operation means, the same for every backend.

    what: CONTACT (a service was tried: counts in services and needs), PROBE (failed
          without reaching anything, or at a unix path no rule names: evidence only) or
          NOISE; DENIED (svctrace's guard refused it: a need, kept apart as evidence of
          the refusal). name: the service, or the label when no rule names it. label: the
          destination as every backend labels it ("tcp:10.0.0.5:80"; probes of inet
          destinations carry no transport, which a backend may not know: "10.0.0.5:80").
    """

    what: str
    name: str | None = None
    label: str | None = None


_NOISE = Verdict(NOISE)


def canonical(dest: Destination) -> Destination:
    """One spelling per address: IPv4-mapped IPv6 is IPv4, addresses in canonical text."""
    if dest.family not in ("inet", "inet6"):
        return dest
    try:
        addr = ipaddress.ip_address(dest.address)
    except ValueError:
        return dest  # a host name (the in-process backend on a failed connect)
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return replace(dest, family="inet", address=str(addr.ipv4_mapped))
    text = str(addr)
    return dest if text == dest.address else replace(dest, address=text)


def _probe_label(dest: Destination) -> str:
    if dest.family == "inet6":
        return f"[{dest.address}]:{dest.port}"
    if dest.family == "inet":
        return f"{dest.address}:{dest.port}"
    return dest.label()


class ServiceMap:
    """Classifies destinations: the user's ignore list, then user rules (most specific
    first), then the default noise, then the default services; else the label."""

    def __init__(self, user: dict[str, list[str]] | None = None,
                 ignore: list[str] | None = None, use_defaults: bool = True,
                 noise: tuple[str, ...] = ()) -> None:
        self.ignore = [parse_rule("(ignored)", spec) for spec in ignore or ()]
        self.rules: list[Rule] = []
        self._user_rules = 0
        for source in (user or {}, DEFAULT_SERVICES if use_defaults else {}):
            rules = [parse_rule(name, spec) for name, specs in source.items() for spec in specs]
            rules.sort(key=lambda r: r.specificity, reverse=True)  # stable: config order on ties
            self.rules.extend(rules)
            if source is user:  # (with no user rules every rule is a default one)
                self._user_rules = len(self.rules)
        # Default noise applies with or without the default services: it is never a service.
        self.noise = [parse_rule("(noise)", spec) for spec in DEFAULT_IGNORE + tuple(noise)]
        self._cache: dict[Destination, str | None] = {}
        self._verdicts: dict[tuple, Verdict] = {}
        self.service_names = frozenset(rule.name for rule in self.rules)
        self.by_name = [rule for rule in self.rules + self.ignore if rule.host_glob]
        # What the run's own traffic says of each destination (protocol, host, the tree's
        # own listeners): the names depend on it, so a change drops the caches.
        self.wire = Wire()
        self._wire_version = 0

    @property
    def user_rule_count(self) -> int:
        """How many of `rules` (first) are the user's: they win over every default."""
        return self._user_rules

    def _sync(self) -> None:
        """The wire learned something that may rename a destination: forget the names."""
        self._wire_version = self.wire.version
        self._cache.clear()
        self._verdicts.clear()

    def classify(self, dest: Destination, names: tuple[str, ...] = ()) -> str | None:
        """Service name, the destination's label when no rule matches, None for noise.
        In order: the user's rules; the protocol its clients spoke (a default rule that
        speaks it keeps its name); the default rules; the host names (names: those the run
        observed for dest, join/names.py: host rules match them, and an unnamed
        destination known by exactly one is labelled by it); the label."""
        if names:
            return self._classify_named(dest, names)
        if self._wire_version != self.wire.version:
            self._sync()
        if dest in self._cache:
            return self._cache[dest]
        result: str | None = None
        # No address: an accepted or socketpair unix socket, or an inet send a backend could
        # not resolve. Not a contact with anything nameable; backends count these in stats.
        if not (dest.family in IGNORED_FAMILIES or not dest.address
                or any(r.matches(dest) for r in self.ignore)):
            user = self.rules[:self._user_rules]
            result = next((r.name for r in user if r.matches(dest)), None)
            if result is None and not any(r.matches(dest) for r in self.noise):
                defaults = [r for r in self.rules[self._user_rules:] if r.matches(dest)]
                result = self._by_protocol(dest, defaults)
                if result is None:
                    result = defaults[0].name if defaults else dest.label()
        if len(self._cache) < 100_000:
            self._cache[dest] = result
        return result

    def _classify_named(self, dest: Destination, names: tuple[str, ...]) -> str | None:
        if any(r.matches_name(dest, names) for r in self.ignore if r.host_glob):
            return None
        user = self.rules[:self._user_rules]
        by_rule = next((r.name for r in user if r.matches_name(dest, names)), None)
        if by_rule is not None:
            return by_rule
        found = self.classify(dest)
        if found != dest.label() or len(names) != 1:
            return found  # a rule or a default names it; several names: ambiguous
        # "clickhouse.ci", "kafka-1": the name says the service (a refused connect sends
        # no bytes that could; its in-progress connect and its sends must agree with it)
        return first_label_service(names[0], self.service_names) or \
            named_label(dest, names[0])

    def named_by_user(self, dest: Destination) -> bool:
        """Whether one of the user's rules names dest."""
        return any(r.matches(canonical(dest)) for r in self.rules[:self._user_rules])

    def _by_protocol(self, dest: Destination, defaults: list[Rule]) -> str | None:
        """The name the recognised protocol gives dest, or None (not recognised, or
        ambiguous: the default rules and the label decide)."""
        learned = self.wire.recognised(dest) if dest.family in ("inet", "inet6") else None
        if learned is None or learned.recognition.protocol == AMBIGUOUS:
            return None
        protocol = learned.recognition.protocol
        if self.wire.listener(dest) is not None:
            # A server the suite started itself (a random port, new every run): its
            # protocol is the stable name.
            return PROTOCOL_SERVICES.get(protocol, protocol)
        for rule in defaults:
            speaks = DEFAULT_PROTOCOLS.get(rule.spec)
            if protocol == "tls" or speaks is None or protocol in speaks:
                return rule.name
        if protocol in _HOST_NAMED:
            port = _HOST_NAMED[protocol]
            return host_name(learned.recognition, learned.hosts, dest, port) \
                or f"{protocol}:{dest.label().split(':', 1)[1]}"
        return PROTOCOL_SERVICES.get(protocol, protocol)

    def judge(self, kind: str, dest: Destination, result: int,
              names: tuple[str, ...] = ()) -> Verdict:
        """The contact rule (README "Attribution rules") for a connect, connect_result or
        send with this result: contact, probe or noise, and under which name (names: the
        host names observed for dest, see classify)."""
        if self._wire_version != self.wire.version:
            self._sync()
        # a send's byte count does not matter
        key = (kind, dest, result if result < 0 else 0, names)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._judge(kind, canonical(dest), result, names)
            if len(self._verdicts) < 100_000:
                self._verdicts[key] = verdict
        return verdict

    def _judge(self, kind: str, dest: Destination, result: int,
               names: tuple[str, ...] = ()) -> Verdict:
        if kind == "denied":  # the guard's own record: it refused exactly what a rule names
            name = self.classify(dest, names)
            if name is None:
                return _NOISE
            if dest.family in ("inet", "inet6") and internet(dest.address) and not any(
                    r.name == name for r in self.rules[:self._user_rules]):
                name = "internet"  # `--deny internet` comes before the port defaults
            return Verdict(DENIED, name, dest.label())
        if dest.family == "unix":
            name = self.classify(dest)
            if name is None:
                return _NOISE
            if result in _NO_LISTENER and name == dest.label():
                return Verdict(PROBE, name, name)  # nobody listens, and no rule wants it
            return Verdict(CONTACT, name, dest.label())
        if dest.family not in ("inet", "inet6"):
            return _NOISE  # netlink, packet sockets...: IGNORED_FAMILIES
        if kind == "connect_result" or (kind == "connect" and result in _TCP_ONLY):
            if dest.transport not in ("tcp", "udp"):
                dest = replace(dest, transport="tcp")  # only a TCP connect gets that far
        elif result in _LOCAL_FAILURES:
            return self._probe(dest, names)
        elif kind == "connect" and dest.transport != "tcp":
            # A UDP connect sends nothing (glibc's getaddrinfo connects UDP sockets to sort
            # candidate addresses), and a TCP connect that succeeded is never "other".
            return _NOISE
        name = self.classify(dest, names)
        unnamed = name == dest.label() or (
            names and set(names) <= _LOOPBACK_NAMES and name == named_label(dest, names[0]))
        if unnamed and result == -errno.ECONNREFUSED and kind in ("connect", "connect_result"):
            # Refused, and nothing (rule, name, protocol) says what it was: port 0, or a
            # closed port a test probes on purpose. No tier could start it. ("localhost"
            # names every loopback port: it identifies nothing.)
            return self._probe(dest)
        return _NOISE if name is None else Verdict(CONTACT, name, dest.label())

    def _probe(self, dest: Destination, names: tuple[str, ...] = ()) -> Verdict:
        name = self.classify(dest, names)
        if name is None:
            return _NOISE
        label = _probe_label(dest)
        return Verdict(PROBE, label if name == dest.label() else name, label)
