"""The event pump: records from the backend, the guard and the marker pipe into the collector."""
from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Callable

from svctrace.capture.base import Backend
from svctrace.config import Config
from svctrace.events import Event, Freeze, Lookup, ProcessEvent
from svctrace.join.collect import Collector
from svctrace.kernel import pidns

if TYPE_CHECKING:
    from svctrace.guard.base import Enforcer


def stack_taker(backend: Backend, cfg: Config, note: Callable[[str | None], None]):
    """The taker that dumps and resumes processes the kernel stops, or None (noted)."""
    from svctrace.run import stacks
    if backend.name != "ebpf":
        note(f"--stacks: not taken with the {backend.name} backend (the "
             "ebpf backend takes them; inprocess takes Python-socket ones itself)"
             if backend.name != "inprocess" else None)
        return None
    if stacks.find_py_spy() is None:
        note(stacks.INSTALL_HINT)
        return None
    service_map = cfg.service_map()

    def judge(kind, dest):
        verdict = service_map.judge(kind, dest, 0)
        return verdict.name if verdict.what != "noise" else None
    return stacks.StackTaker(judge)


class Pump:
    """Feeds every record to the collector; a backend whose polling fails is detached and
    the run goes on untraced, said in the notes."""

    def __init__(self, backend: Backend, collector: Collector, notes: list[str],
                 log: Callable[[str], None], guard: Enforcer | None = None,
                 stacks=None) -> None:
        self.backend = backend
        self.collector = collector
        self.notes = notes
        self.log = log
        self.guard = guard
        self.stacks = stacks  # svctrace.run.stacks.StackTaker, or None
        self.tracing = True
        self.cmdline_seen: set[int] = set()
        self.proc_is_ours = pidns.proc_is_ours()

    def feed(self, records) -> None:
        add = self.collector.add
        for record in records:
            if type(record) is Lookup:
                self.lookup(record)
            elif type(record) is Freeze:  # stopped by the kernel: dump, resume (always)
                stack = self.stacks.take(record) if self.stacks else None
                if self.stacks is None:  # not compiled without a taker; never left stopped
                    try:
                        os.kill(record.pid, signal.SIGCONT)
                    except OSError:
                        pass
                if stack is not None:
                    add(stack)
                continue
            if isinstance(record, (Event, ProcessEvent)) and record.pid not in self.cmdline_seen:
                self.cmdline_seen.add(record.pid)
                self.learn_cmdline(record.pid)
            add(record)

    def lookup(self, record: Lookup) -> None:
        """A name the run resolved: the guard refuses its addresses if a denied service's
        rule names it; a process the kernel held at that getaddrinfo result resumes."""
        try:
            if self.guard is not None:
                self.guard.learn(record)
        finally:
            if record.held:
                try:
                    os.kill(record.pid, signal.SIGCONT)
                except OSError:
                    pass

    def learn_cmdline(self, pid: int) -> None:
        # /proc of another PID namespace (unshare --pid without --mount-proc) shows
        # another process under this pid: better no command line than a wrong one.
        if len(self.cmdline_seen) > 100_000 or not self.proc_is_ours:
            return
        # Imported here, once the command runs: psutil's import (10-20 ms measured) stays
        # out of the start-up the user waits for.
        import psutil
        try:
            args = psutil.Process(pid).cmdline()
        except psutil.Error:
            return  # gone already (or a zombie): evidence falls back to the thread name
        if args:
            self.collector.note_cmdline(pid, " ".join(args)[:4096])

    def drain(self, final: bool = False) -> None:
        """What the guard and the backend have recorded since the last call; `final`: the
        command has exited, so stop them and take the rest."""
        if self.guard is not None:  # its refusals, whatever happened to tracing
            self.feed(self.guard.stop() if final else self.guard.poll())
        if not self.tracing:
            return
        try:
            self.feed(self.backend.stop() if final else self.backend.poll())
        except Exception as exc:  # degrade: keep the command running, say so in the report
            self.tracing = False
            self.notes.append(f"tracing stopped early: {type(exc).__name__}: {exc}")
            self.log(f"WARNING: tracing stopped early ({exc}); the report is incomplete")
            if not final:
                self._stop_quietly()

    def _stop_quietly(self) -> None:
        """Detach a backend whose polling failed (probes attached, nobody draining them;
        strace leftovers waiting on a full pipe): keep what it still delivers."""
        try:
            self.feed(self.backend.abort())
        except Exception as exc:
            self.notes.append(f"stopping the backend failed too: {type(exc).__name__}: {exc}")
