"""Where the plugin's records go: the `svctrace run` pipe, or memory (standalone pytest)."""
from __future__ import annotations

import itertools
import os
import threading

from svctrace import wire

_BATCH = 3072  # below PIPE_BUF: one write of whole lines stays atomic


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
        self._forked = False
        self.errors = 0

    def __call__(self, record, urgent: bool = True) -> None:
        if os.getpid() != self.pid:  # a forked child: its parent's buffer is not its own
            self._buffer, self._size, self.pid = [], 0, os.getpid()
            self._forked = True
        if self._forked:
            urgent = True  # a forked child may leave through os._exit(): never buffer
        lines = wire.encode(record, f"{self.pid}-{next(self._ids)}")
        with self._lock:
            for line in lines:
                if self._size + len(line) > _BATCH:
                    self._flush_locked()
                self._buffer.append(line)
                self._size += len(line)
            if urgent:
                self._flush_locked()

    def event(self, record) -> None:
        self(record, urgent=False)

    def flush(self) -> None:
        with self._lock:
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
        self.pid = os.getpid()

    def __call__(self, record, urgent: bool = True) -> None:
        if os.getpid() != self.pid:
            return  # a forked child's memory is lost with it; the report says so
        with self._lock:
            self.records.append(record)

    def event(self, record) -> None:
        self(record)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def lines(self) -> list[str]:
        """Records as wire lines, for shipping from an xdist worker via workeroutput."""
        with self._lock:
            return [line.decode() for rec in self.records for line in wire.encode(rec)]
