"""`svctrace run`: marker pipe, backend, the command as the invoking user, and the report."""
from __future__ import annotations

import gc
import os
import pwd
import sys
import time
from typing import TYPE_CHECKING

from svctrace.run import pluginpath
from svctrace.kernel import pidns
from svctrace.capture import select_backend
from svctrace.capture.base import Backend, RunContext
from svctrace.config import Config
from svctrace.events import RunInfo
from svctrace.join.collect import Collector
from svctrace.report.files import write_run_report
from svctrace.run.child import (Identity, SignalForwarder, child_environment, exec_child,
                                exit_status, invoking_identity, reap)
from svctrace.run.markerpipe import MarkerPipe
from svctrace.run.pump import Pump, stack_taker
from svctrace.run.terminal import Progress, give_terminal, take_terminal
from svctrace.userfiles import OutputError
from svctrace.words import counted

if TYPE_CHECKING:  # the guard's module loads only for guarded runs
    from svctrace.guard.base import Enforcer

POLL_S = 0.02          # measured: polling every ~20 ms without wakeups costs ~1.03-1.14x
WATERMARK_NS = 3 * 10**9  # attribute events once markers up to this age have surely arrived
RUN_GC_YOUNG = 50_000


def _pid_namespace() -> str | None:
    """The PID namespace the run's pids belong to (a container's or the host's)."""
    try:
        return pidns.current().label()
    except OSError:
        return None


class Run:
    """One traced run of a command: sets the pieces up, runs the loop, writes the report."""

    def __init__(self, command: list[str], backend: str, report_path: str, cfg: Config,
                 as_root: bool = False, progress_s: float = 60.0, log=None,
                 guard: Enforcer | None = None, stacks: bool = False,
                 selection: dict | None = None) -> None:
        self.command = command
        self.selection = selection  # contract.SELECTION: the tier `--plan/--tier` runs
        self.guard = guard  # refuses denied services (svctrace.guard.kernel.Guard)
        self.cfg = cfg
        self.report_path = report_path
        self.log = log or (lambda msg: print(f"svctrace: {msg}", file=sys.stderr, flush=True))
        self.progress_s = progress_s
        self.ident = invoking_identity(as_root)
        cls, choice_notes = select_backend(backend)
        for note in choice_notes:
            self.log(note)
        self.backend: Backend = cls()
        self.collector = Collector(cfg, cls.clock, freeze_report=True)  # leaves by os._exit
        # Why better backends were skipped, what was mounted; "using X" is run.backend.
        self.notes: list[str] = [n for n in choice_notes if " using " not in n]
        self.report: dict | None = None
        self.write_error: str | None = None
        self.report_written = False
        self.pid = 0
        self.signals = SignalForwarder()
        self.want_stacks = stacks
        self.stacks = stack_taker(self.backend, cfg, self._note) if stacks else None
        self.pump = Pump(self.backend, self.collector, self.notes, self.log, guard,
                         self.stacks)

    def _note(self, text: str | None) -> None:
        if text:
            self.notes.append(text)
            self.log(text)

    def _hold_lookups(self) -> None:
        """A guard refusing services by host name learns their addresses at each
        getaddrinfo result, while the process waits for it (the eBPF backend holds it;
        the pump resumes it)."""
        if self.guard is None or not self.guard.refuses_by_name():
            return
        hold = getattr(self.backend, "hold_lookups", None)
        if hold is None or not hold():
            self.notes.append("the guard refuses services by host name only from the next "
                              "connect after this backend reports the name (not held: only "
                              "the eBPF backend with getaddrinfo traced holds a lookup)")

    def _now(self) -> int:
        return time.monotonic_ns() if self.backend.clock == "mono" else time.time_ns()

    # -- the run -------------------------------------------------------------------------
    def execute(self) -> int:
        self.pid = 0
        pipe = MarkerPipe(self.ident)
        ctx = RunContext(list(self.command), self.ident.uid, self.ident.gid, self.ident.user,
                         {k: v for k, v in {"ringbuf_pages": self.cfg.ringbuf_pages,
                                            "stacks": self.stacks is not None or None,
                                            "strace_writes": self.cfg.strace_writes or None,
                                            "kernel_join": self.cfg.kernel_join
                                            }.items()
                          if v is not None}, pipe.path)
        started_wall = time.time()
        exit_code: int | None = None
        thresholds = gc.get_threshold()
        try:
            self.backend.prepare(ctx)
            if self.guard is not None:
                self.guard.start()  # its cgroup and programs, before anything forks
            # What start-up built (bcc, the compiled program's tables) lives to the end:
            # keep the cyclic GC's full scans during the run off it (they found nothing
            # there and cost long runs their share of a second).
            gc.freeze()
            # Records are built and dropped by the thousand: a young generation of 50,000
            # objects, not 700, spares long runs collections (up to 7% of decoding and
            # attribution on 8,000 tests: python -m benchmarks.runner_replay).
            gc.set_threshold(RUN_GC_YOUNG, *thresholds[1:])
            argv = self.backend.wrap_command(list(self.command))
            drops_itself = self.backend.drops_privileges
            env = pluginpath.environment(
                child_environment(self.ident, pipe.path, self.backend.name,
                                  self.want_stacks, self.selection),
                pluginpath.build(pipe.dir, self.ident.uid, self.ident.gid))
            gate_r, gate_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                exec_child(argv, env, Identity() if drops_itself else self.ident,
                           gate_r, gate_w)
            os.close(gate_r)
            self.pid = pid
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass  # the child did it first
            self.signals.install(pid)
            tty = give_terminal(pid)
            try:
                try:
                    if self.guard is not None:
                        self.guard.enter(pid)  # guarded before its first instruction
                    self.backend.child_started(pid)
                    self._hold_lookups()
                    os.write(gate_w, b"g")  # probes attached: the command may start now
                finally:
                    os.close(gate_w)  # without "g" the child exits 125 instead of running
                exit_code = self._loop(pid, pipe)
                wrapped = self.backend.command_exit_code()
                if wrapped is not None:
                    exit_code = wrapped
            except BaseException:
                if exit_code is None:
                    reap(pid)
                raise
            finally:
                take_terminal(tty)
                self.signals.restore()
        finally:
            try:
                if self.pid:  # else nothing ran: the caller reports the setup error
                    self._finish(pipe, exit_code, started_wall)
            finally:
                gc.set_threshold(*thresholds)
                pipe.close()
                if self.stacks is not None:
                    self.stacks.resume_all()  # no process stays stopped, whatever failed
                if self.guard is not None:
                    self.guard.stop()  # idempotent: also when nothing ran
        return exit_code if exit_code is not None else 1

    def _loop(self, pid: int, pipe: MarkerPipe) -> int:
        progress = Progress(self.progress_s)
        while True:
            code = exit_status(pid)
            if code is not None:
                return code
            # A plain sleep, not select() on the pipe: waking for every marker line cost
            # the runner a loop per phase edge; the 1 MiB pipe holds 20 ms of them.
            time.sleep(POLL_S)
            self.pump.feed(pipe.read())
            self.pump.drain()
            self.collector.flush(self._now() - WATERMARK_NS)
            if progress.due():
                ran, events, markers = self.collector.progress()
                progress.show(pipe.path, f"{counted(ran, 'test')} so far, {counted(events, 'event')}, "
                              f"{self.backend.stats().get('lost_events', 0)} lost",
                              plugin_seen=bool(markers))

    def _finish(self, pipe: MarkerPipe, exit_code: int | None, started_wall: float) -> None:
        """Always runs: whatever was traced is written, even after errors or Ctrl-C."""
        self.pump.drain(final=True)
        self.pump.feed(pipe.read())
        stats = {}
        try:
            stats = dict(self.backend.stats())
        except Exception as exc:
            self.notes.append(f"backend stats unavailable: {exc}")
        self.notes.extend(self.backend.notes())
        damage = pipe.damage()
        if damage:
            self.notes.append(damage)
        self.notes.extend(pipe.notes)
        guard = {}
        if self.guard is not None:
            self.notes.extend(self.guard.notes)
            guard = {"guard": self.guard.stats(),
                     "denied_services": list(self.guard.spec.denied)}
        if self.stacks is not None:
            stats["stacks"] = self.stacks.stats()
        forwarded = self.signals.note()
        if forwarded:
            self.notes.append(forwarded)
        run = RunInfo(self.backend.name, tuple(self.command), tuple(self.backend.blind_spots),
                      exit_code, {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                              time.gmtime(started_wall)),
                                  "duration_s": round(time.time() - started_wall, 3),
                                  "clock": "monotonic" if self.backend.clock == "mono"
                                  else "wall",
                                  "ran_as": self.ident.user or pwd.getpwuid(os.geteuid())[0],
                                  "pid_namespace": _pid_namespace(),
                                  "notes": self.notes, **guard})
        self.report = self.collector.finish(run, stats)
        if self.guard is not None and self.guard.shadow:
            # The enforced guard's fields, each marked: nothing was refused.
            for test in self.report["tests"].values():
                for evidence in test["denied_evidence"].values():
                    evidence["shadow"] = True
        try:
            # Under sudo as the invoking user (cli.main: userfiles.act_for), so the kernel
            # refuses what they could not write themselves; the file is theirs, no chown.
            # A run in which no test ran keeps an existing report (the CLI says so).
            self.report_written = write_run_report(self.report, self.report_path)
        except OutputError as exc:
            # The command has run: keep its exit status; the CLI reports this separately.
            self.write_error = f"cannot write the report to {self.report_path}: {exc.reason}"
