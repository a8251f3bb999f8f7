"""Service map: destination -> service name, from defaults plus user rules (pure)."""
from __future__ import annotations

import fnmatch
import ipaddress
from dataclasses import dataclass

from svctrace.events import Destination

# DESIGN.md "Default service map". Users extend/override it in [tool.svctrace.services].
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
}
# glibc's name-service cache probe: every getaddrinfo() may touch it; never a service.
DEFAULT_IGNORE: tuple[str, ...] = ("unix:/var/run/nscd/socket", "unix:/run/nscd/socket")
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

    @property
    def specificity(self) -> tuple:
        """Sort key, larger first: rules with a port (host:port, then CIDR:port, then port
        alone) before rules without one (CIDR alone); then the narrower network, the
        narrower port range, and a rule tied to a transport."""
        prefix = self.network.prefixlen if self.network is not None else -1
        width = self.ports[1] - self.ports[0] if self.ports else 0
        return (self.ports is not None, prefix, -width, self.transport is not None)

    def matches(self, dest: Destination) -> bool:
        if self.unix_glob is not None:
            return dest.family == "unix" and fnmatch.fnmatchcase(dest.address, self.unix_glob)
        if dest.family not in ("inet", "inet6"):
            return False
        if self.transport and dest.transport != self.transport:
            return False
        if self.ports and not (dest.port is not None
                               and self.ports[0] <= dest.port <= self.ports[1]):
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
        raise RuleError(f"{spec!r}: {text!r} is not an IP address or CIDR "
                        "(host names are not resolved: give the address)") from None


def parse_rule(name: str, spec: str) -> Rule:
    """Parse one rule: "5432", "7000-7005", "8125/udp", "10.0.0.5:8080", "[::1]:5432",
    "10.0.0.0/8", "10.0.0.0/8:9092", "unix:/run/*.sock"."""
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
        return Rule(name, spec, network=_network(host, spec),
                    ports=_port_range(port, spec), transport=transport)
    return Rule(name, spec, network=_network(text, spec), transport=transport)


class ServiceMap:
    """Classifies destinations. User rules win over defaults; then the most specific rule."""

    def __init__(self, user: dict[str, list[str]] | None = None,
                 ignore: list[str] | None = None, use_defaults: bool = True) -> None:
        self.rules: list[Rule] = []
        for source in (user or {}, DEFAULT_SERVICES if use_defaults else {}):
            rules = [parse_rule(name, spec) for name, specs in source.items() for spec in specs]
            rules.sort(key=lambda r: r.specificity, reverse=True)  # stable: config order on ties
            self.rules.extend(rules)
        specs = list(DEFAULT_IGNORE if use_defaults else ()) + list(ignore or ())
        self.ignore = [parse_rule("(ignored)", spec) for spec in specs]
        self._cache: dict[Destination, str | None] = {}

    def classify(self, dest: Destination) -> str | None:
        """Service name, the destination's label when no rule matches, None for noise."""
        if dest in self._cache:
            return self._cache[dest]
        result: str | None
        # No address: an accepted or socketpair unix socket, or an inet send a backend could
        # not resolve. Not a contact with anything nameable; backends count these in stats.
        if (dest.family in IGNORED_FAMILIES or not dest.address
                or any(r.matches(dest) for r in self.ignore)):
            result = None
        else:
            result = next((r.name for r in self.rules if r.matches(dest)), dest.label())
        if len(self._cache) < 100_000:
            self._cache[dest] = result
        return result
