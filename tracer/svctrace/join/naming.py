"""What a run learned about each destination from the wire: its protocol, the host the
client asked for, and whether a process of the traced tree listens there (pure).

Attribution feeds it as records arrive (a first send's bytes, a listen); the service map
asks it when naming a destination, and the report shows it per destination.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from svctrace.events import Destination
from svctrace.join.protocols import AMBIGUOUS, Recognition, recognise

MAX_DESTINATIONS = 4096  # destinations described: evidence, not a log
MAX_HOSTS = 4


def _key(dest: Destination) -> tuple:
    # A connect whose transport a backend could not tell is a TCP one once it got far
    # enough to be named (services.ServiceMap._judge settles it the same way).
    transport = dest.transport if dest.transport in ("tcp", "udp") else "tcp"
    return dest.address, dest.port, transport


@dataclass
class Learned:
    """The protocol of one destination, over every connection to it."""

    recognition: Recognition
    hosts: list = field(default_factory=list)   # distinct Host / SNI values, first seen first
    connections: int = 0                         # first sends recognised


def _unspecified(address: str) -> bool:
    return address in ("0.0.0.0", "::", "")


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Wire:
    """Recognitions per destination and the traced tree's own TCP listeners."""

    def __init__(self) -> None:
        self._learned: dict[tuple, Learned] = {}
        self._listeners: dict[int, dict[str, int]] = {}  # port -> {bound address: pid}
        self.version = 0  # bumped on every change that can rename a destination

    def learn(self, dest: Destination, data: bytes, connections: int = 1) -> None:
        """Recognise a connection's first bytes (sent to dest) and remember the answer;
        `connections`: how many connections sent these very bytes first."""
        if dest.family not in ("inet", "inet6") or not dest.address:
            return
        found = recognise(data, dest.transport)
        if found is None:
            return
        key = _key(dest)
        known = self._learned.get(key)
        if known is None:
            if len(self._learned) >= MAX_DESTINATIONS:
                return
            known = self._learned[key] = Learned(found)
            self.version += 1
        elif known.recognition.protocol != found.protocol:
            # Connections to one destination disagree: say so, name it by neither.
            names = {*(known.recognition.candidates or (known.recognition.protocol,)),
                     *(found.candidates or (found.protocol,))} - {AMBIGUOUS}
            known.recognition = Recognition(
                AMBIGUOUS, "connections that fit " + " and ".join(sorted(names)),
                None, tuple(sorted(names)))
            self.version += 1
        if found.host and found.host not in known.hosts and len(known.hosts) < MAX_HOSTS:
            known.hosts.append(found.host)
            self.version += 1
        known.connections += connections

    def recognised(self, dest: Destination) -> Learned | None:
        return self._learned.get(_key(dest)) if self._learned else None

    def listen(self, dest: Destination, pid: int) -> None:
        """A process of the traced tree listens on dest (its bound address and port)."""
        if dest.port:
            bound = self._listeners.setdefault(dest.port, {})
            if dest.address not in bound:
                bound[dest.address] = pid
                self.version += 1

    @property
    def listening(self) -> bool:
        """Whether any process of the tree listens (most runs: none, and no check)."""
        return bool(self._listeners)

    def listener(self, dest: Destination) -> int | None:
        """The pid of the traced process listening where dest points, if any: the same
        address, or any loopback address when it listens on all of them."""
        bound = self._listeners.get(dest.port or 0) if self._listeners else None
        if not bound:
            return None
        if dest.address in bound:
            return bound[dest.address]
        if _loopback(dest.address):
            for address, pid in bound.items():
                if _unspecified(address) or _loopback(address):
                    return pid
        return None

    def describe(self, name_of) -> dict[str, dict]:
        """{destination label: evidence} for every recognised or suite-owned destination;
        name_of(Destination) is its service name (or None for noise)."""
        out = {}
        for (address, port, transport), known in self._learned.items():
            family = "inet6" if ":" in address else "inet"
            dest = Destination(family, transport, address, port)
            rec = known.recognition
            entry = {"service": name_of(dest), "protocol": rec.protocol,
                     "recognised_from": rec.source, "connections": known.connections}
            if rec.candidates:
                entry["candidates"] = list(rec.candidates)
            if known.hosts:
                entry["hosts"] = list(known.hosts)
            if self.listener(dest) is not None:
                entry["suite_listener"] = True
            out[dest.label()] = entry
        return dict(sorted(out.items()))


def host_name(rec: Recognition, hosts: list, dest: Destination, default_port: int
              ) -> str | None:
    """The name of an HTTP or TLS destination after the one host its clients asked for
    ("billing.internal:8080", "api.example.test"): the port only where it is not the
    scheme's own. None when no host, several hosts, or an address as the host."""
    if len(hosts) != 1:
        return None
    host = hosts[0]
    name, port = host, None
    if host.startswith("["):  # [v6]:port
        name, _, rest = host[1:].partition("]")
        port = rest[1:] or None
    elif host.count(":") == 1:
        name, port = host.split(":")
    try:
        ipaddress.ip_address(name)
        return None  # an address is no name
    except ValueError:
        pass
    if port is None and dest.port and dest.port != default_port and rec.protocol == "tls":
        port = str(dest.port)  # SNI carries no port: the connection's own
    if port is None or port == str(default_port):
        return name
    return f"{name}:{port}"
