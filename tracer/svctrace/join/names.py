"""Host names the traced tree resolved, joined to destinations by address and time (pure).

A name is known for an address when a lookup of the tree (a DNS reply to its own query, or
the C library's getaddrinfo) returned that address before the contact. Many names often
share one address (every CI service on 127.0.0.1), so a connect takes the name its own
thread resolved last for that address (a resolver call is synchronous: getaddrinfo, then
connect), else its process's, else its process tree's (the pytest process that owns it),
else the run's; the sends of a connection take the names of its connect. Where several
names remain, all are reported (ambiguous), never one of them with certainty.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from svctrace.events import Destination, Lookup
from svctrace.join.dns import parse_reply, split_stream

MAX_ADDRESSES = 65536  # addresses remembered; beyond it new lookups are counted, not kept
# A getaddrinfo result this soon after its process's DNS reply for the same name is that
# reply passed through (the resolver's own timeout is 5 s by default, times its attempts)
_SAME_LOOKUP_NS = 30 * 10**9
_STREAM_MAX = 65536 + 2  # one DNS/TCP message at most is buffered per socket
HOW_TEXT = {"dns": "DNS answer", "nss": "getaddrinfo (hosts file or nss)"}


@dataclass(frozen=True, slots=True)
class Learned:
    """One name for one address: how it was learned, when, by which process (its owner:
    the pytest process whose tree looked it up, None outside pytest)."""

    name: str
    how: str
    ts: int
    pid: int
    owner: int | None
    tid: int = 0
    aliases: tuple[str, ...] = ()
    server: str = ""

    def as_dict(self) -> dict:
        found = {"name": self.name, "how": self.how}
        if self.aliases:
            found["aliases"] = list(self.aliases)
        if self.server:
            found["server"] = self.server
        return found


def _canonical(address: str) -> str:
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return address
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
        return True
    except ValueError:
        return not text


class NameTable:
    """address -> names learned, fed with Lookup records in arrival order."""

    def __init__(self) -> None:
        self._by_address: dict[str, list[Learned]] = {}
        self._streams: dict[tuple[int, str], bytes] = {}
        # (pid, destination) -> the names its last connect took: its sends take them too
        self._connected: dict[tuple[int, Destination], tuple[Learned, ...]] = {}
        self.counts = {"dns_replies": 0, "dns_unparsed": 0, "nss_lookups": 0,
                       "names_dropped": 0}

    def __bool__(self) -> bool:
        return bool(self._by_address)

    def add(self, lookup: Lookup, ts: int, owner: int | None) -> None:
        if lookup.how == "nss":
            self.counts["nss_lookups"] += 1
            if lookup.name and lookup.addresses:
                self._learn(lookup.name.rstrip(".").lower(), lookup.addresses,
                            Learned("", "nss", ts, lookup.pid, owner, lookup.tid))
            return
        server = lookup.server.label() if lookup.server else ""
        for message in self._messages(lookup, server):
            reply = parse_reply(message)
            if reply is None:
                self.counts["dns_unparsed"] += 1
                continue
            self.counts["dns_replies"] += 1
            if reply.question and reply.addresses:
                self._learn(reply.question, reply.addresses,
                            Learned("", "dns", ts, lookup.pid, owner, lookup.tid,
                                    reply.aliases, server))

    def _messages(self, lookup: Lookup, server: str) -> list[bytes]:
        if not lookup.stream:
            return [lookup.payload]
        # DNS over TCP: a reply may come in several reads (glibc reads the length first)
        key = (lookup.pid, server)
        data = self._streams.pop(key, b"") + lookup.payload
        messages, used = [], 0
        while len(data) - used >= 2:
            length = (data[used] << 8) | data[used + 1]
            if len(data) - used - 2 < length:
                break
            messages += split_stream(data[used:used + 2 + length])
            used += 2 + length
        rest = data[used:]
        if rest and len(rest) <= _STREAM_MAX:
            self._streams[key] = rest
        return messages

    def _learn(self, name: str, addresses, template: Learned) -> None:
        if _is_address(name):
            return  # getaddrinfo("127.0.0.1"): an address, not a name the test used
        learned = Learned(name, template.how, template.ts, template.pid, template.owner,
                          template.tid, template.aliases, template.server)
        for address in addresses:
            key = _canonical(address)
            known = self._by_address.get(key)
            if template.how == "nss" and known and any(
                    e.how == "dns" and e.name == name and e.pid == template.pid
                    and 0 <= template.ts - e.ts <= _SAME_LOOKUP_NS for e in known[-8:]):
                continue  # getaddrinfo returning what the DNS reply just said: that is how
            if known is None:
                if len(self._by_address) >= MAX_ADDRESSES:
                    self.counts["names_dropped"] += 1
                    continue
                known = self._by_address[key] = []
            # The same lookup again (a loop resolving "localhost"): only its newest counts,
            # so the list grows with distinct (name, thread) pairs, not with lookups.
            same = next((i for i, e in enumerate(known) if e.name == name
                         and e.how == learned.how and e.tid == learned.tid
                         and e.pid == learned.pid), None)
            if same is not None:
                del known[same]
            known.append(learned)

    def summary(self, limit: int = 500) -> dict:
        """{name: {"addresses": [...], "how": [...]}}: what the run resolved (report run)."""
        out: dict[str, dict] = {}
        for address, known in self._by_address.items():
            for entry in known:
                found = out.get(entry.name)
                if found is None:
                    if len(out) >= limit:
                        continue
                    found = out[entry.name] = {"addresses": [], "how": []}
                if address not in found["addresses"]:
                    found["addresses"].append(address)
                if entry.how not in found["how"]:
                    found["how"].append(entry.how)
        return {name: {key: sorted(values) for key, values in found.items()}
                for name, found in sorted(out.items())}

    def knows(self, dest: Destination) -> bool:
        return dest.address in self._by_address

    def names_for(self, dest: Destination, ts: int, owner: int | None, pid: int = 0,
                  tid: int = 0, kind: str = "connect") -> tuple[Learned, ...]:
        """The names of dest (canonical) for one event: one entry when the name is
        certain, several when ambiguous, none when no lookup returned its address."""
        key = (pid, dest)
        if kind == "send":
            known = self._connected.get(key)
            if known is not None:
                return known
        found = self._resolve(dest, ts, owner, pid, tid)
        if kind != "send" and found:
            if len(self._connected) >= MAX_ADDRESSES:
                self._connected.clear()
            self._connected[key] = found
        return found

    def _resolve(self, dest: Destination, ts: int, owner: int | None, pid: int,
                 tid: int) -> tuple[Learned, ...]:
        known = self._by_address.get(dest.address)
        if not known:
            return ()
        before = [entry for entry in known if entry.ts <= ts]
        for same in ((lambda e: e.tid == tid and e.pid == pid) if tid else None,
                     (lambda e: e.pid == pid) if pid else None):
            mine = [entry for entry in before if same(entry)] if same else []
            if mine:
                return (max(mine, key=lambda entry: entry.ts),)
        tree = [entry for entry in before if entry.owner == owner and owner is not None]
        latest: dict[str, Learned] = {}
        for entry in tree or before:
            latest[entry.name] = entry
        return tuple(sorted(latest.values(), key=lambda entry: entry.name))
def named_label(dest: Destination, name: str) -> str:
    """The label of a destination known by one host name: "tcp:mystery.ci:7777"."""
    return f"{dest.transport}:{name}:{dest.port}"


def first_label_service(name: str, services) -> str | None:
    """The service a host name's first label names ("clickhouse.ci" -> clickhouse,
    "kafka-1" -> kafka), if `services` holds it."""
    first = name.split(".", 1)[0]
    if first in services:
        return first
    base = first.rstrip("0123456789").rstrip("-_")
    return base if base != first and base in services else None
