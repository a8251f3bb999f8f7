"""`svctrace run`: marker pipe, backend, the command as the invoking user, and the report."""
from __future__ import annotations

import errno
import fcntl
import gc
import os
import pwd
import signal
import sys
import time
from dataclasses import dataclass, field

from svctrace.run import pluginpath
from svctrace.capture import wire
from svctrace.kernel import pidns
from svctrace.capture import select_backend
from svctrace.capture.base import Backend, RunContext
from svctrace.config import Config
from svctrace.contract import (ENV_BACKEND, ENV_OWNER, ENV_PIPE, ENV_STACKS,
                               progress_path)
from svctrace.events import Event, Freeze, ProcessEvent, RunInfo
from svctrace.join.collect import NO_MARKERS, Collector
from svctrace.run.rundirs import make_private_dir, remove_private_dir, sweep_leftovers
from svctrace.userfiles import OutputError, invoking_user

POLL_S = 0.02          # measured: polling every ~20 ms without wakeups costs ~1.03-1.14x
WATERMARK_NS = 3 * 10**9  # attribute events once markers up to this age have surely arrived
F_SETPIPE_SZ = 1031
RUN_GC_YOUNG = 50_000
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


@dataclass
class Identity:
    """Who the command runs as."""

    uid: int | None = None
    gid: int | None = None
    user: str | None = None
    home: str | None = None
    groups: list[int] = field(default_factory=list)

    @property
    def drops(self) -> bool:
        return self.uid is not None


def invoking_identity(as_root: bool) -> Identity:
    """Under sudo, the invoking user (userfiles.invoking_user), unless --as-root."""
    owner = None if as_root else invoking_user()
    if owner is None:
        return Identity()
    try:
        home = pwd.getpwuid(owner.uid).pw_dir
    except KeyError:
        home = "/"
    return Identity(owner.uid, owner.gid, owner.name, home, list(owner.groups))


def child_environment(ident: Identity, pipe: str, backend: str,
                      stacks: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_PIPE] = pipe
    env[ENV_BACKEND] = backend
    env.pop(ENV_OWNER, None)  # a run inside a traced test has a pipe (and owner) of its own
    env.pop(ENV_STACKS, None)
    if stacks and backend == "inprocess":
        env[ENV_STACKS] = "1"
    if ident.drops:
        env.update({"HOME": ident.home or "/", "USER": ident.user or str(ident.uid),
                    "LOGNAME": ident.user or str(ident.uid)})
        env.pop("SUDO_COMMAND", None)
    return env


class MarkerPipe:
    """The FIFO every pytest process of the run writes its records to."""

    def __init__(self, ident: Identity) -> None:
        self.notes = sweep_leftovers()  # a runner killed by SIGKILL could not clean up
        # Only the user the command runs as (and root) may write markers: 0700, theirs.
        self.dir = make_private_dir(ident.uid, ident.gid) if ident.drops else make_private_dir()
        self.path = os.path.join(self.dir, "markers")
        os.mkfifo(self.path, 0o600)
        if ident.drops:
            os.chown(self.path, ident.uid, ident.gid)
        self.rfd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Our own write end keeps the FIFO from reporting EOF between writers.
        self.keep_wfd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.rfd, F_SETPIPE_SZ, 1 << 20)  # absorb bursts from many workers
        except OSError:
            pass
        self.decoder = wire.Decoder()

    def read(self) -> list:
        records = []
        while True:
            try:
                data = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            records.extend(self.decoder.feed(data))
        return records

    def close(self) -> None:
        for fd in (self.keep_wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        remove_private_dir(self.dir)


def _pid_namespace() -> str | None:
    """The PID namespace the run's pids belong to (a container's or the host's)."""
    try:
        return pidns.current().label()
    except OSError:
        return None


def _exec_child(argv: list[str], env: dict, ident: Identity, gate_r: int, gate_w: int) -> None:
    """In the forked child: wait until tracing is attached, drop privileges, exec."""
    try:
        os.close(gate_w)
        os.setpgid(0, 0)
        if os.read(gate_r, 1) != b"g":
            os._exit(125)  # the runner failed before releasing us
        os.close(gate_r)
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        if ident.drops:
            os.setgroups(ident.groups)
            os.setgid(ident.gid)
            os.setuid(ident.uid)
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        os.write(2, f"svctrace: command not found: {argv[0]}\n".encode())
        os._exit(127)
    except BaseException as exc:  # noqa: BLE001 - we are a forked child: never return
        os.write(2, f"svctrace: cannot start {argv[0]}: {exc}\n".encode())
        os._exit(126)


class Run:
    """One traced run of a command."""

    def __init__(self, command: list[str], backend: str, report_path: str, cfg: Config,
                 as_root: bool = False, progress_s: float = 60.0, log=None,
                 guard=None, stacks: bool = False) -> None:
        self.command = command
        self.guard = guard  # svctrace.guard.kernel.Guard: refuses denied services (issue 12)
        self.cfg = cfg
        self.report_path = report_path
        self.log = log or (lambda msg: print(f"svctrace: {msg}", file=sys.stderr, flush=True))
        self.progress_s = progress_s
        self.ident = invoking_identity(as_root)
        cls, choice_notes = select_backend(backend)
        for note in choice_notes:
            self.log(note)
        self.backend: Backend = cls()
        self.collector = Collector(cfg, cls.clock)
        self.attributor = self.collector.attributor  # fed and flushed while the command runs
        # Why better backends were skipped, what was mounted; "using X" is run.backend.
        self.notes: list[str] = [n for n in choice_notes if " using " not in n]
        self.report: dict | None = None
        self.write_error: str | None = None
        self._tracing = True
        self._signals: list[int] = []
        self._cmdline_seen: set[int] = set()
        self._proc_is_ours = pidns.proc_is_ours()
        self.want_stacks = stacks
        self.stacks = self._stack_taker(cfg) if stacks else None  # --stacks (issue 16)

    # -- helpers -------------------------------------------------------------------------
    def _stack_taker(self, cfg: Config):
        """The taker that dumps and resumes processes the kernel stops, or None (noted)."""
        from svctrace.join import stacks
        if self.backend.name != "ebpf":
            self._note(f"--stacks: not taken with the {self.backend.name} backend (the "
                       "ebpf backend takes them; inprocess takes Python-socket ones itself)"
                       if self.backend.name != "inprocess" else None)
            return None
        if stacks.find_py_spy() is None:
            self._note(stacks.INSTALL_HINT)
            return None
        service_map = cfg.service_map()

        def judge(kind, dest):
            verdict = service_map.judge(kind, dest, 0)
            return verdict.name if verdict.what != "noise" else None
        return stacks.StackTaker(judge)

    def _note(self, text: str | None) -> None:
        if text:
            self.notes.append(text)
            self.log(text)

    def _now(self) -> int:
        return time.monotonic_ns() if self.backend.clock == "mono" else time.time_ns()

    def _feed(self, records) -> None:
        for record in records:
            if type(record) is Freeze:  # stopped by the kernel: dump, resume (always)
                stack = self.stacks.take(record) if self.stacks else None
                if self.stacks is None:  # not compiled without a taker; never left stopped
                    try:
                        os.kill(record.pid, signal.SIGCONT)
                    except OSError:
                        pass
                if stack is not None:
                    self.attributor.add(stack)
                continue
            if isinstance(record, (Event, ProcessEvent)) and record.pid not in self._cmdline_seen:
                self._cmdline_seen.add(record.pid)
                self._learn_cmdline(record.pid)
            self.attributor.add(record)

    def _learn_cmdline(self, pid: int) -> None:
        # /proc of another PID namespace (unshare --pid without --mount-proc) shows
        # another process under this pid: better no command line than a wrong one.
        if len(self._cmdline_seen) > 100_000 or not self._proc_is_ours:
            return
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                raw = fh.read(4096)
        except OSError:
            return  # gone already: evidence falls back to the thread name
        if raw:
            self.attributor.note_cmdline(pid, raw.rstrip(b"\0").replace(b"\0", b" ")
                                         .decode("utf-8", "replace"))

    def _poll_backend(self, final: bool = False) -> None:
        if self.guard is not None:  # its refusals, whatever happened to tracing
            self._feed(self.guard.stop() if final else self.guard.poll())
        if not self._tracing:
            return
        try:
            self._feed(self.backend.stop() if final else self.backend.poll())
        except Exception as exc:  # degrade: keep the command running, say so in the report
            self._tracing = False
            self.notes.append(f"tracing stopped early: {type(exc).__name__}: {exc}")
            self.log(f"WARNING: tracing stopped early ({exc}); the report is incomplete")
            if not final:
                self._stop_quietly()

    def _stop_quietly(self) -> None:
        """Detach a backend whose polling failed (probes attached, nobody draining them;
        strace leftovers waiting on a full pipe): keep what it still delivers."""
        try:
            self._feed(self.backend.abort())
        except Exception as exc:
            self.notes.append(f"stopping the backend failed too: {type(exc).__name__}: {exc}")

    def _on_signal(self, signum, frame) -> None:
        self._signals.append(signum)
        if self.pid:
            try:
                os.killpg(self.pid, signum)  # the command's whole process group
            except ProcessLookupError:
                pass

    # -- the run -------------------------------------------------------------------------
    def execute(self) -> int:
        self.pid = 0
        pipe = MarkerPipe(self.ident)
        ctx = RunContext(list(self.command), self.ident.uid, self.ident.gid, self.ident.user,
                         {k: v for k, v in {"ringbuf_pages": self.cfg.ringbuf_pages,
                                            "stacks": self.stacks is not None or None,
                                            "strace_writes": self.cfg.strace_writes or None
                                            }.items()
                          if v is not None})
        started_wall = time.time()
        exit_code: int | None = None
        thresholds = gc.get_threshold()
        try:
            self.backend.prepare(ctx)
            if self.guard is not None:
                self.guard.start()  # its cgroup and programs, before anything forks
            # What start-up built (bcc, the compiled program's tables) lives to the end:
            # keep the cyclic GC's full scans during the run off it (issue 13).
            gc.freeze()
            # Records are built and dropped by the thousand: a young generation of 50,000
            # objects, not 700, spares long runs collections (up to 7% of decoding and
            # attribution on 8,000 tests: python -m benchmarks.runner_replay).
            gc.set_threshold(RUN_GC_YOUNG, *thresholds[1:])
            argv = self.backend.wrap_command(list(self.command))
            drops_itself = self.backend.drops_privileges
            env = pluginpath.environment(
                child_environment(self.ident, pipe.path, self.backend.name,
                                  self.want_stacks),
                pluginpath.build(pipe.dir, self.ident.uid, self.ident.gid))
            gate_r, gate_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                _exec_child(argv, env, Identity() if drops_itself else self.ident,
                            gate_r, gate_w)
            os.close(gate_r)
            self.pid = pid
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass  # the child did it first
            previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
            tty = self._give_terminal(pid)
            try:
                try:
                    if self.guard is not None:
                        self.guard.enter(pid)  # guarded before its first instruction
                    self.backend.child_started(pid)
                    os.write(gate_w, b"g")  # probes attached: the command may start now
                finally:
                    os.close(gate_w)  # without "g" the child exits 125 instead of running
                exit_code = self._loop(pid, pipe)
                wrapped = self.backend.command_exit_code()
                if wrapped is not None:
                    exit_code = wrapped
            except BaseException:
                if exit_code is None:
                    self._reap(pid)
                raise
            finally:
                self._take_terminal(tty)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
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

    def _reap(self, pid: int) -> None:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass

    def _give_terminal(self, pid: int) -> int | None:
        """Interactive: make the command the terminal's foreground group, so Ctrl-C reaches
        it once (as with plain pytest) and we only forward signals sent to us."""
        try:
            if not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
                return None
            old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            try:
                os.tcsetpgrp(0, pid)
            finally:
                signal.signal(signal.SIGTTOU, old)
            return os.getpgrp()
        except OSError:
            return None

    def _take_terminal(self, pgrp: int | None) -> None:
        if pgrp is None:
            return
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(0, pgrp)
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGTTOU, old)

    def _loop(self, pid: int, pipe: MarkerPipe) -> int:
        last_progress = time.monotonic()
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                return 1
            if done:
                return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) \
                    else 128 + os.WTERMSIG(status)
            # A plain sleep, not select() on the pipe: waking for every marker line cost
            # the runner a loop per phase edge; the 1 MiB pipe holds 20 ms of them.
            time.sleep(POLL_S)
            self._feed(pipe.read())
            self._poll_backend()
            self.attributor.flush(self._now() - WATERMARK_NS)
            if self.progress_s and time.monotonic() - last_progress >= self.progress_s:
                last_progress = time.monotonic()
                counts = self.attributor.counts
                ran = sum(1 for t in self.attributor.tests.values() if t.ran)
                self._progress(pipe, f"{ran} tests so far, {counts['events']} events, "
                               f"{self.backend.stats().get('lost_events', 0)} lost")

    def _progress(self, pipe: MarkerPipe, text: str) -> None:
        """Hand the progress line to the owner pytest (plugin.Progress prints it between
        tests); with no plugin writing markers, or one that left a line untaken for long,
        print it here, on a line of its own."""
        path = progress_path(pipe.path)
        try:
            # The plugin looks once a second, between tests: a line left much longer means
            # no plugin takes them (or one test runs for long): print them here from now on.
            if time.time() - os.lstat(path).st_mtime > max(10.0, 2 * self.progress_s):
                self._print_progress = True
        except OSError:
            pass
        if getattr(self, "_print_progress", False) or not self.attributor.counts["markers"]:
            # pytest's dot line is usually open on the terminal: start a line of our own
            print(f"\nsvctrace: {text}", file=sys.stderr, flush=True)
            return
        # Created exclusively and renamed over the target: a link planted in the user's
        # run folder is replaced, never written through (we may be root).
        temp = path + ".new"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w") as out:
                out.write(f"svctrace: {text}\n")
            os.rename(temp, path)
        except OSError:
            self._print_progress = True
            print(f"\nsvctrace: {text}", file=sys.stderr, flush=True)

    def _finish(self, pipe: MarkerPipe, exit_code: int | None, started_wall: float) -> None:
        """Always runs: whatever was traced is written, even after errors or Ctrl-C."""
        self._poll_backend(final=True)
        self._feed(pipe.read())
        stats = {}
        try:
            stats = dict(self.backend.stats())
        except Exception as exc:
            self.notes.append(f"backend stats unavailable: {exc}")
        self.notes.extend(self.backend.notes())
        if pipe.decoder.bad_lines or pipe.decoder.incomplete():
            self.notes.append(f"{pipe.decoder.bad_lines} unreadable and "
                              f"{pipe.decoder.incomplete()} incomplete marker records")
        self.notes.extend(pipe.notes)
        guard = {}
        if self.guard is not None:
            self.notes.extend(self.guard.notes)
            guard = {"guard": self.guard.info(), "denied_services": list(self.guard.spec.denied)}
        if self.stacks is not None:
            stats["stacks"] = self.stacks.stats()
        if self._signals:
            names = sorted({signal.Signals(s).name for s in self._signals})
            self.notes.append(f"received {', '.join(names)}: forwarded to the command")
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
        if NO_MARKERS in self.report["run"]["notes"]:
            self.log(f"WARNING: {NO_MARKERS}")
        try:
            # Under sudo as the invoking user (cli.main: userfiles.act_for), so the kernel
            # refuses what they could not write themselves; the file is theirs, no chown.
            self.collector.write(self.report_path)
        except OutputError as exc:
            # The command has run: keep its exit status; the CLI reports this separately.
            self.write_error = f"cannot write the report to {self.report_path}: {exc.reason}"
