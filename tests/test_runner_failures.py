"""The runner when its backend breaks mid-run: the command goes on, untraced, and ends."""
from __future__ import annotations

import socket
import sys
import time

from svctrace.config import Config
from svctrace.run.runner import Run
from tests.support.backends import needs_backend

# Sends for ~3 s: long enough for the strace pipe to fill if nobody drained it.
CHATTY = ("import socket, time\n"
          "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
          "end = time.monotonic() + 3\n"
          "while time.monotonic() < end:\n"
          "    s.sendto(b'x' * 64, ('127.0.0.1', {port}))\n")


@needs_backend("strace")
def test_failed_poll_detaches_strace_and_the_command_finishes(tmp_path):
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    command = [sys.executable, "-c", CHATTY.format(port=sink.getsockname()[1])]
    run = Run(command, "strace", str(tmp_path / "r.json"), Config(), progress_s=0,
              log=lambda msg: None)
    real_poll, calls = run.backend.poll, []

    def failing_poll():
        calls.append(1)
        if len(calls) == 3:  # a parser or decoder bug surfacing mid-run
            raise RuntimeError("injected poll failure")
        return real_poll()

    run.backend.poll = failing_poll
    started = time.monotonic()
    code = run.execute()
    assert code == 0
    assert time.monotonic() - started < 20  # strace's pipe kept draining: nothing blocked
    assert len(calls) == 3  # never polled again after the failure
    notes = run.report["run"]["notes"]
    assert any("tracing stopped early" in n and "injected poll failure" in n for n in notes)
    assert run.backend._discarding  # abort(): the pump drains but keeps nothing
