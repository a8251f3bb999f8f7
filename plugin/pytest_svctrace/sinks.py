"""Where the plugin's records go: the `svctrace run` pipe, or memory (standalone pytest)."""
from __future__ import annotations

import dataclasses
import itertools
import os
import threading
import weakref

from svctrace.capture import wire

_BATCH = 3072  # below PIPE_BUF: one write of whole lines stays atomic
_SINKS: "weakref.WeakSet" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # fork() copies a lock another thread held, and that thread does not exist in the
    # child: without a fresh lock the child's first record waits forever.
    for sink in list(_SINKS):
        sink.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Folder:
    """Folds the in-process backend's sends to one destination between two markers into
    the first send and one "tail" record (the last send, count = the others): a tight
    redis loop then costs one record per test phase, as with the eBPF backend."""

    def __init__(self) -> None:
        self._open: dict[tuple, list] = {}

    @property
    def open(self) -> bool:
        """Whether any send is folded (a drain would have something to report)."""
        return bool(self._open)

    def add(self, event) -> object | None:
        """The event to record now, or None when it was folded."""
        if getattr(event, "kind", None) != "send":  # a Lookup (getaddrinfo) has no kind
            return event
        key = (event.pid, event.dest, event.local_port)
        slot = self._open.get(key)
        if slot is None:
            self._open[key] = [0, event]
            return event
        slot[0] += event.count
        slot[1] = event
        return None

    def drain(self) -> list:
        tails = [dataclasses.replace(last, count=n) for n, last in self._open.values() if n]
        self._open.clear()
        return tails


class PipeSink:
    """Writes records to the marker pipe that `svctrace run` created.

    Events (in-process backend) are batched to save syscalls; markers flush the batch so a
    reader sees each phase edge promptly. Every write is whole lines and <= PIPE_BUF bytes."""

    def __init__(self, path: str) -> None:
        # O_NONBLOCK only for the open (fails fast if no reader), then blocking writes so a
        # busy reader slows us down rather than losing lines.
        self.fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.set_blocking(self.fd, True)
        self._buffer: list[bytes] = []
        self._size = 0
        self._lock = threading.Lock()
        self._ids = itertools.count()
        self.pid = os.getpid()
        self._chunk_id = f"{self.pid}-{next(self._ids)}"  # the next chunked record's id
        self._forked = False
        self._folder = Folder()
        self.errors = 0
        _SINKS.add(self)

    def after_fork(self) -> None:
        """In a forked child: its parent's buffer and lock are not its own."""
        self._buffer, self._size, self.pid = [], 0, os.getpid()
        self._chunk_id = f"{self.pid}-{next(self._ids)}"
        self._folder, self._forked, self._lock = Folder(), True, threading.Lock()

    def __call__(self, record, urgent: bool = True) -> None:
        self._put(record, None, urgent)

    def line(self, data: bytes, urgent: bool = True) -> None:
        """A record already encoded as one line (wire.marker_line)."""
        if urgent and not self._forked and os.getpid() == self.pid:
            with self._lock:  # the plugin's phase edges: mostly one line, written at once
                if not self._buffer and not self._folder.open:
                    try:
                        os.write(self.fd, data)
                    except OSError:
                        self.errors += 1
                    return
        self._put(None, data, urgent)

    def _put(self, record, data: bytes | None, urgent: bool) -> None:
        if os.getpid() != self.pid:  # forked without Python's fork hooks (os.fork runs them)
            self.after_fork()
        if self._forked:
            urgent = True  # a forked child may leave through os._exit(): never buffer
        with self._lock:
            if urgent and self._folder.open:  # the sends folded before an edge go first
                for tail in self._folder.drain():
                    self._append_locked(tail)
            if data is None:
                self._append_locked(record)
            else:
                self._append_line_locked(data)
            if urgent:
                self._flush_locked()

    def _append_locked(self, record) -> None:
        lines = wire.encode(record, self._chunk_id)
        if len(lines) > 1:  # chunked: every record needs its own id
            self._chunk_id = f"{self.pid}-{next(self._ids)}"
        for line in lines:
            self._append_line_locked(line)

    def _append_line_locked(self, line: bytes) -> None:
        if self._size + len(line) > _BATCH:
            self._flush_locked()
        self._buffer.append(line)
        self._size += len(line)

    def event(self, record) -> None:
        if self._forked or os.getpid() != self.pid:
            self(record)
            return
        with self._lock:
            record = self._folder.add(record)
        if record is not None:
            self(record, urgent=False)

    def flush(self) -> None:
        with self._lock:
            for tail in self._folder.drain():
                self._append_locked(tail)
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer, self._size = [], 0
        try:
            os.write(self.fd, data)
        except OSError:
            self.errors += 1  # the runner went away: tracing degrades, tests go on

    def close(self) -> None:
        self.flush()
        try:
            os.close(self.fd)
        except OSError:
            pass


class MemorySink:
    """Keeps records in this process (standalone `pytest --svctrace-report`)."""

    def __init__(self) -> None:
        self.records: list = []
        self._lock = threading.Lock()
        self._folder = Folder()
        self.pid = os.getpid()
        _SINKS.add(self)

    def after_fork(self) -> None:
        # The child's records are dropped (see __call__); only the lock needs renewing.
        self._lock, self._folder = threading.Lock(), Folder()

    def __call__(self, record, urgent: bool = True) -> None:
        if os.getpid() != self.pid:
            return  # a forked child's memory is lost with it; the report says so
        with self._lock:
            if urgent:
                self.records.extend(self._folder.drain())
            self.records.append(record)

    def line(self, data: bytes, urgent: bool = True) -> None:
        self(wire.record_of(data), urgent)

    def event(self, record) -> None:
        if os.getpid() != self.pid:
            return
        with self._lock:
            record = self._folder.add(record)
            if record is not None:
                self.records.append(record)

    def flush(self) -> None:
        with self._lock:
            self.records.extend(self._folder.drain())

    def close(self) -> None:
        pass

    def lines(self) -> list[str]:
        """Records as wire lines, for shipping from an xdist worker via workeroutput."""
        self.flush()
        with self._lock:
            return [line.decode() for rec in self.records for line in wire.encode(rec)]
