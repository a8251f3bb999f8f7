"""Who started whom, and when: process and thread ancestry over time, pid reuse included (pure)."""
from __future__ import annotations

import bisect

# Incarnations kept per pid or tid. Events wait for attribution only a few hundred ms,
# far less than the kernel takes to cycle through pid_max (32768 here) several times.
_DEPTH = 4
_BEFORE_ALL = -(1 << 63)  # a record without a timestamp in the attribution clock


class Lineage:
    """Fork, exit and thread records, looked up by the time an event happened.

    Backends announce a reused pid or tid with a new fork or thread record; looking up by
    time keeps what was known of the old one for its events that are still pending.
    """

    def __init__(self) -> None:
        # pid -> [(since, ppid)], ppid None from the process's exit on
        self._procs: dict[int, list[tuple[int, int | None]]] = {}
        self._threads: dict[int, list[tuple[int, int]]] = {}  # tid -> [(birth, pid)]

    @staticmethod
    def _push(history: dict, key: int, entry: tuple) -> None:
        entries = history.setdefault(key, [])
        bisect.insort(entries, entry, key=lambda e: e[0])  # records arrive nearly in order
        if len(entries) > _DEPTH:
            del entries[0]

    @staticmethod
    def _at(entries: list | None, ts: int | None) -> tuple | None:
        if not entries:
            return None
        index = bisect.bisect_right(entries, _BEFORE_ALL if ts is None else ts,
                                    key=lambda e: e[0])
        return entries[index - 1] if index else None

    def fork(self, pid: int, ppid: int, ts: int | None) -> bool:
        """Record a new process; True if `pid` was known before (a reused pid)."""
        reused = pid in self._procs
        self._push(self._procs, pid, (_BEFORE_ALL if ts is None else ts, ppid))
        return reused

    def exit(self, pid: int, ts: int | None) -> None:
        if pid in self._procs and ts is not None:
            self._push(self._procs, pid, (ts, None))

    def thread(self, tid: int, pid: int, ts: int | None) -> None:
        self._push(self._threads, tid, (_BEFORE_ALL if ts is None else ts, pid))

    def parent(self, pid: int, ts: int | None) -> tuple[int, int | None] | None:
        """(ppid, fork time) of the process `pid` was at `ts`; None when unknown or exited."""
        entry = self._at(self._procs.get(pid), ts)
        if entry is None or entry[1] is None:
            return None
        return entry[1], None if entry[0] == _BEFORE_ALL else entry[0]

    def thread_birth(self, tid: int, pid: int, ts: int | None) -> int | None:
        """When thread `tid` of process `pid` (as it was at `ts`) was born; None if unknown."""
        entry = self._at(self._threads.get(tid), ts)
        if entry is None or entry[1] != pid or entry[0] == _BEFORE_ALL:
            return None
        fork = self._at(self._procs.get(pid), ts)
        if fork is not None and fork[0] > entry[0]:
            return None  # born in an earlier process with this pid: a stale record
        return entry[0]
