"""--stacks, the taking side: dump the Python stacks of a process the kernel stopped, resume it.

The eBPF program stops a process (SIGSTOP) right after its first contact with a destination,
or right after one of its threads created another, once per marker epoch
(bpf/svctrace.bpf.c freeze_now); StackTaker dumps its Python stacks with
`py-spy dump --nonblocking` (the process is held still by the stop itself, so py-spy need
not ptrace it) and resumes it, whatever happened. Measured here: ~35 ms per dump.
join.stacks parses the dumps and resolves them (pure).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from svctrace.events import Freeze, Stack
from svctrace.join.stacks import parse_dump

INSTALL_HINT = ("--stacks needs py-spy, which is not installed: pip install 'svctrace[stacks]' "
                "(or pip install py-spy) into the environment svctrace runs from")
DUMP_TIMEOUT_S = 2.0   # py-spy on a stopped process takes ~35 ms; never hold one longer
MAX_DUMPS = 5000       # per run: a bound on what --stacks can cost however the suite behaves


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (a venv's bin, also under sudo), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


class StackTaker:
    """Runner side: dumps and resumes every process the kernel stopped for --stacks."""

    def __init__(self, judge, cwd: str | None = None, py_spy: str | None = None,
                 clock=time.monotonic_ns) -> None:
        self.judge = judge        # (kind, Destination) -> service name or None (noise)
        self.cwd = cwd or os.getcwd()
        self.py_spy = py_spy or find_py_spy()
        self.clock = clock
        self._done: set[tuple] = set()
        self._held: set[int] = set()
        self.counts = {"stops": 0, "dumps": 0, "failed_dumps": 0, "dump_ms": 0.0,
                       "held_ms": 0.0, "max_held_ms": 0.0}

    def _wanted(self, fr: Freeze) -> bool:
        """One dump per (process, service, marker epoch); none for noise; a thread
        creation always (the kernel already keeps one per creating thread and epoch)."""
        if fr.trigger == "thread":
            key = (fr.pid, "thread", fr.creator, fr.epoch)
        else:
            service = self.judge(fr.trigger, fr.dest) if fr.dest is not None else None
            if service is None:
                return False
            key = (fr.pid, service, fr.epoch)
        if key in self._done or self.counts["dumps"] >= MAX_DUMPS:
            return False
        if len(self._done) > 200_000:
            self._done.clear()
        self._done.add(key)
        return True

    def take(self, fr: Freeze) -> Stack | None:
        """Dump the stopped process if this stop is wanted; resume it in every case."""
        self.counts["stops"] += 1
        self._held.add(fr.pid)
        try:
            if not self._wanted(fr) or not self.py_spy:
                return None
            started = self.clock()
            threads, error = self._dump(fr.pid)
            self.counts["dumps"] += 1
            self.counts["dump_ms"] += (self.clock() - started) / 1e6
            if error:
                self.counts["failed_dumps"] += 1
            held = round((self.clock() - fr.mono_ns) / 1e6, 3)
            return Stack(fr.mono_ns, fr.pid, fr.tid, fr.trigger, fr.creator, threads,
                         "frozen", None, held, error)
        finally:
            self.resume(fr.pid, fr.mono_ns)

    def _dump(self, pid: int) -> tuple[tuple, str]:
        try:
            proc = subprocess.run([self.py_spy, "dump", "--pid", str(pid), "--nonblocking",
                                   "--json"], capture_output=True, text=True,
                                  timeout=DUMP_TIMEOUT_S, stdin=subprocess.DEVNULL,
                                  check=False)
        except subprocess.TimeoutExpired:
            return (), f"py-spy took longer than {DUMP_TIMEOUT_S:.0f} s"
        except OSError as exc:
            return (), f"py-spy could not run: {exc}"
        if proc.returncode != 0:
            # not a Python process (a C program, a shell), or it exited mid-dump
            lines = (proc.stderr or proc.stdout).strip().splitlines()
            return (), (lines[-1] if lines else f"py-spy exited {proc.returncode}")[:300]
        try:
            return parse_dump(proc.stdout, self.cwd), ""
        except (ValueError, TypeError, AttributeError) as exc:
            return (), f"unreadable py-spy output: {exc}"

    def resume(self, pid: int, since_ns: int | None = None) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass  # it exited (or was killed) while stopped: nothing to resume
        self._held.discard(pid)
        if since_ns is not None:
            held = (self.clock() - since_ns) / 1e6
            self.counts["held_ms"] += held
            self.counts["max_held_ms"] = max(self.counts["max_held_ms"], held)

    def resume_all(self) -> None:
        """Every exit path of the run: no process stays stopped because of us."""
        for pid in list(self._held):
            self.resume(pid)

    def stats(self) -> dict:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.counts.items()}
