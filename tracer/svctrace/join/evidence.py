"""Evidence for one service in one place: counts, destinations, processes, the first event
(pure). Attribution fills it; the report serialises it."""
from __future__ import annotations

import errno
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from svctrace.events import Event

MAX_KEPT = 8  # threads, destinations and processes kept per contact: evidence, not a log
# Where ignored traffic beyond MAX_KEPT destinations is counted: no label looks like it
MORE_DESTINATIONS = "(more destinations)"


def result_text(kind: str, result: int) -> str:
    if kind not in ("connect", "connect_result"):
        return "ok" if result >= 0 else errno.errorcode.get(-result, str(result))
    if result == 0:
        return "ok"
    if result == -errno.EINPROGRESS:
        return "in progress"
    if result == -errno.ECONNREFUSED:
        return "refused"
    return errno.errorcode.get(-result, str(result)).lower()


@lru_cache(maxsize=4096)
def internet(address: str) -> bool:
    """Is `address` on the internet: globally routable, so neither loopback, private,
    link-local, shared (CGNAT), documentation nor reserved (RFC 6890's registries)."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


def _add_names(entry: dict, names: list[dict]) -> None:
    """Union the host names of one destination entry, by name and how (a few at most)."""
    known = entry.setdefault("names", [])
    for found in names:
        if len(known) < MAX_KEPT and not any(k["name"] == found["name"]
                                             and k["how"] == found["how"] for k in known):
            known.append(found)
    known.sort(key=lambda k: (k["name"], k["how"]))


@dataclass
class Contact:
    """Aggregated evidence for one service in one place (test phase or unattributed bucket)."""

    connects: int = 0
    sends: int = 0
    failed_connects: int = 0
    background: bool = False
    threads: set = field(default_factory=set)
    destinations: set = field(default_factory=set)
    fixtures: set = field(default_factory=set)   # fixture windows the events fell in
    outside_fixtures: bool = False               # some event fell in no fixture window
    gaps: set = field(default_factory=set)       # gaps between phases the events fell in
    first: dict | None = None
    first_ts: int | None = None
    # Per destination label: connects, failed connects, sends, and failures by result, so
    # a reader sees where each count went; the first MAX_KEPT labels only.
    by_destination: dict = field(default_factory=dict)
    # Per pid: the process's parent, command line and role ("pytest" or "subprocess"),
    # with the thread names seen in it, so threads and child processes are told apart.
    processes: dict = field(default_factory=dict)

    def _dest(self, label: str, ev: Event | None = None) -> dict | None:
        entry = self.by_destination.get(label)
        if entry is None and len(self.by_destination) < MAX_KEPT:
            entry = self.by_destination[label] = {"connects": 0, "failed_connects": 0,
                                                  "sends": 0, "errors": {}}
            if ev is not None and ev.dest.family in ("inet", "inet6") \
                    and internet(ev.dest.address):
                entry["internet"] = True  # a test that needs the internet is flaky
        return entry

    def _failed(self, label: str, result: str, n: int = 1) -> None:
        self.failed_connects += n
        entry = self._dest(label)
        if entry is not None:
            entry["failed_connects"] += n
            entry["errors"][result] = entry["errors"].get(result, 0) + n

    def add(self, ev: Event, ts: int, evidence: Callable[[], dict], fixture: str | None,
            label: str, gap: str | None = None,
            process: Callable[[], dict] | None = None, names: tuple = ()) -> None:
        """Count ev; evidence() describes it and is only called when ev is the first;
        process() describes ev's process, called the first time its pid is seen; names:
        the host names learned for its address (join/names.Learned)."""
        if ev.kind == "connect_result":
            # the later failure of a connect already counted (same time and thread)
            if ev.result < 0:
                self._failed(label, result_text(ev.kind, ev.result))
                if self.first and self.first_ts == ts and self.first["kind"] == "connect":
                    self.first["result"] = result_text(ev.kind, ev.result)
            return
        entry = self._dest(label, ev)
        if names and entry is not None:
            _add_names(entry, [learned.as_dict() for learned in names])
        if ev.kind in ("connect", "denied"):  # a refusal by the guard is a failed attempt
            # count: a kernel-folded record (tail) stands for that many attempts
            self.connects += ev.count
            if entry is not None:
                entry["connects"] += ev.count
            if ev.result not in (0, -errno.EINPROGRESS):
                self._failed(label, result_text(ev.kind, ev.result), ev.count)
        else:
            self.sends += ev.count
            if entry is not None:
                entry["sends"] += ev.count
        proc = self.processes.get(ev.pid)
        if proc is None and len(self.processes) < MAX_KEPT:
            proc = self.processes[ev.pid] = {**(process() if process else {}),
                                             "threads": set()}
        if proc is not None and len(proc["threads"]) < MAX_KEPT:
            proc["threads"].add(ev.comm)
        if ev.tid != ev.pid:
            self.background = True
        if len(self.threads) < MAX_KEPT:
            self.threads.add(ev.comm)
        if len(self.destinations) < MAX_KEPT:
            self.destinations.add(label)
        if gap:
            self.gaps.add(gap)
        if fixture:
            self.fixtures.add(fixture)
        else:
            self.outside_fixtures = True
        if self.first_ts is None or ts < self.first_ts:
            self.first_ts, self.first = ts, evidence()

    def merge(self, other: "Contact") -> None:
        self.connects += other.connects
        self.sends += other.sends
        self.failed_connects += other.failed_connects
        self.background |= other.background
        self.threads |= other.threads
        self.destinations |= other.destinations
        self.fixtures |= other.fixtures
        self.outside_fixtures |= other.outside_fixtures
        self.gaps |= other.gaps
        if other.first_ts is not None and (self.first_ts is None
                                           or other.first_ts < self.first_ts):
            self.first_ts, self.first = other.first_ts, other.first
        for label, theirs in other.by_destination.items():
            mine = self._dest(label)
            if mine is None:
                continue
            for key in ("connects", "failed_connects", "sends"):
                mine[key] += theirs[key]
            for result, n in theirs["errors"].items():
                mine["errors"][result] = mine["errors"].get(result, 0) + n
            if theirs.get("internet"):
                mine["internet"] = True
            if theirs.get("names"):
                _add_names(mine, theirs["names"])
        for pid, theirs in other.processes.items():
            mine = self.processes.get(pid)
            if mine is None and len(self.processes) < MAX_KEPT:
                mine = self.processes[pid] = {**theirs, "threads": set()}
            if mine is not None:
                mine["threads"] |= theirs["threads"]
