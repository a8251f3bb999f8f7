"""The strace backend's FIFO pump survives a parser failure and keeps draining (no ptrace)."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from svctrace.capture import strace
from svctrace.capture.base import RunContext
from svctrace.events import Event

GOOD = ('4242  1700000000.{n:09d} connect(3<TCP:[5]>, {{sa_family=AF_INET, '
        'sin_port=htons(6379), sin_addr=inet_addr("10.0.0.2")}}, 16) = 0\n')
BAD = "4242  1700000000.{n:09d} BOOM\n"


@pytest.fixture
def backend(monkeypatch):
    # The pump reads a FIFO: no strace process is needed to feed it.
    monkeypatch.setattr(strace, "probe", lambda: strace._Probe("strace", None, False, True))
    backend = strace.StraceBackend()
    backend.prepare(RunContext(["true"]))
    real = backend._parser.feed

    def feed(line: str):
        if "BOOM" in line:
            raise RuntimeError("parser bug")
        return real(line)
    monkeypatch.setattr(backend._parser, "feed", feed)
    sleeper = subprocess.Popen(["sleep", "60"])  # stands in for strace's pid
    backend.child_started(sleeper.pid)
    yield backend
    if not backend._drained:  # the test failed before stop(): end the pump, drop the FIFO
        backend.stop()
    sleeper.kill()
    sleeper.wait()


def test_pump_survives_a_parser_exception_and_drains_more_than_the_pipe_holds(backend):
    lines = [(BAD if n % 100 == 7 else GOOD).format(n=n) for n in range(1, 30_001)]
    data = "".join(lines).encode()
    assert len(data) > 2 * strace._PIPE_SIZE  # more than the FIFO can hold at once
    fd = os.open(backend._fifo, os.O_WRONLY | os.O_NONBLOCK)
    sent, deadline = 0, time.monotonic() + 30
    try:
        while sent < len(data):
            assert time.monotonic() < deadline, "the pump stopped draining the FIFO"
            try:
                sent += os.write(fd, data[sent:sent + 65536])
            except BlockingIOError:
                time.sleep(0.005)
    finally:
        os.close(fd)
    records = list(backend.poll()) + list(backend.stop())
    bad = sum(1 for line in lines if "BOOM" in line)
    assert sum(isinstance(r, Event) for r in records) == len(lines) - bad
    stats = backend.stats()
    assert stats["parser_errors"] == bad == 300
    assert any("300 strace lines were skipped" in note and "RuntimeError: parser bug" in note
               for note in stats["notes"])
