"""The strace backend: runs the command under `strace -f -yy` and parses its output as it streams."""
from __future__ import annotations

import fcntl
import functools
import os
import pwd
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Iterable

from svctrace.kernel import pidns
from svctrace.capture.base import Backend, BackendUnavailable, RunContext
from svctrace.events import Event, ProcessEvent
from svctrace.capture.strace_parse import StraceParser

# Only what attribution needs: every stop delays the tracee, and stopping some threads but
# not others changes races (measured: a short-lived librdkafka client was destroyed before
# its broker thread, stopped on prctl/fcntl, could connect). The send paths of
# sock:sock_send_length except write/writev (WRITES); no close/dup/fcntl, since -yy names
# each socket at every call and the parser joins unix peers by inode; no prctl (thread
# names are read from /proc instead). "?" lets strace skip names this architecture lacks.
TRACE_SET = (
    "connect", "bind", "listen",
    "?send", "sendto", "sendmsg", "sendmmsg", "sendfile", "?sendfile64", "splice",
    "clone", "?clone3", "?fork", "?vfork", "execve", "execveat",
    # strace 6.1 --seccomp-bpf resumes a new thread or process with PTRACE_SYSCALL, so it
    # stops on every system call until its first traced one; glibc's thread start and
    # fork child call set_robust_list first thing, which ends that at once.
    "set_robust_list",
)
# pytest writes to pipes, files and ttys all the time (2,000 tests: ~10,000 writes); sends
# through write() are rare (OpenSSL's socket BIO, Go): traced only on request.
WRITES = ("write", "writev")
# -s also caps how many argv elements strace prints for execve: 128 keeps cmdlines whole
# while send payload previews stay short; a connection's first 128 bytes name most
# protocols (join/protocols.py), every send printing more would cost every send.
STRING_LIMIT = 128
NS_TIMESTAMPS = "--absolute-timestamps=format:unix,precision:ns"
_PIPE_SIZE = 1 << 20  # /proc/sys/fs/pipe-max-size default: 1 MiB of slack for strace
_READ_CHUNK = 1 << 16
_DRAIN_TIMEOUT_S = 10.0
_BATCH_WAIT_S = 0.005
# strace 6.1 waits for every traced descendant and has no kill-on-exit option: once the
# command itself has exited, processes it left running keep strace (and so the run) alive.
LEFTOVER_GRACE_S = 3.0


@dataclass(frozen=True)
class _Probe:
    exe: str | None
    reason: str | None
    seccomp_bpf: bool
    ns_timestamps: bool


def _try(cmd: list[str]) -> tuple[int, str]:
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, timeout=20, text=True)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    return proc.returncode, proc.stderr.strip()


def _thread_name(tgid: int, tid: int) -> str | None:
    """A thread's name now (pthread_setname_np writes it; strace no longer stops on prctl)."""
    try:  # read raw: psutil does not tell thread names
        with open(f"/proc/{tgid}/task/{tid}/comm", "rb") as fh:
            return fh.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:  # the thread has ended: the parser keeps the inherited name
        return None


@functools.lru_cache(maxsize=1)
def probe() -> _Probe:
    """Run strace once on `true` to learn whether ptrace works and which options exist."""
    exe = shutil.which("strace")
    if exe is None:
        return _Probe(None, "strace is not installed: install it (apt-get install strace)",
                      False, False)
    true = shutil.which("true") or "/bin/true"
    rc, err = _try([exe, "-f", "-qq", "-e", "trace=none", "-o", os.devnull, "--", true])
    if rc != 0:
        first = err.splitlines()[0] if err else f"exit status {rc}"
        return _Probe(exe, (
            f"strace cannot trace here ({first}): ptrace is denied; check "
            "/proc/sys/kernel/yama/ptrace_scope (0 or 1 lets a parent trace its child, 3 "
            "forbids ptrace until reboot) or, in a container, allow ptrace "
            "(docker run --cap-add=SYS_PTRACE or a seccomp profile that permits it)"),
            False, False)
    base = [exe, "-f", "-qq", "-e", "trace=none", "-o", os.devnull]
    rc, err = _try(base + ["--seccomp-bpf", "--", true])
    # strace < 5.3 rejects the option; a kernel without seccomp filters makes it warn.
    seccomp = rc == 0 and "seccomp" not in err.lower()
    rc, _ = _try(base + [NS_TIMESTAMPS, "--", true])
    return _Probe(exe, None, seccomp, rc == 0)


class StraceBackend(Backend):
    """strace -f over the whole command tree; wall-clock timestamps."""

    name = "strace"
    clock = "wall"
    # Under sudo the runner must exec strace as root (ptrace of the user's processes, the
    # root-owned FIFO): strace -u then runs the command as the invoking user.
    drops_privileges = True
    blind_spots = (
        "processes not started under the traced command (already running daemons, "
        "services' own processes)",
        "names of threads that ended before their traffic was parsed (names are read from "
        "/proc/<pid>/task/<tid>/comm a few ms later): they show their creator's name",
        "server-side replies on accepted unix sockets and socketpair() traffic (no "
        "destination path)",
        "unix sockets connected by an untraced process and passed in (SCM_RIGHTS)",
        "socket I/O submitted through io_uring",
        "the late outcome of a non-blocking connect (libpq, librdkafka): a refusal after "
        "EINPROGRESS is not traced (getsockopt(SO_ERROR)), so it shows as 'in progress'",
        "host names (DNS replies, getaddrinfo): not traced, so destinations are named by "
        "address and port and rules by host name never match",
        "protocols are recognised from the first 128 bytes strace prints of a connection's "
        "first send (-s): a TLS ClientHello's SNI usually lies beyond them, and OpenSSL "
        "sends its handshake with writes, traced only with strace_writes",
    )
    WRITES_BLIND_SPOT = (
        "sends made with write()/writev() (OpenSSL's TLS sockets, Go programs): not traced "
        "unless strace_writes is set, because pytest writes to its pipes and files far more "
        "often; their connect is seen, so only a connection opened before a test and written "
        "to in it is missed (send/sendto/sendmsg, as libpq, librdkafka, redis-py and "
        "Python's socket use, are seen)"
    )

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return probe().reason

    def prepare(self, ctx: RunContext) -> None:
        super().prepare(ctx)
        self._probe = probe()
        if self._probe.reason:
            raise BackendUnavailable(self._probe.reason)
        self._user = self._run_user(ctx)
        # mkdtemp makes the directory 0700; the FIFO inside is 0600.
        self._dir = tempfile.mkdtemp(prefix="svctrace-strace-")
        self._fifo = os.path.join(self._dir, "strace.out")
        os.mkfifo(self._fifo, 0o600)
        os.chmod(self._fifo, 0o600)
        # Our own read end exists before strace opens its write end (so strace's open
        # never blocks), and a spare write end of ours keeps reads from seeing EOF before
        # strace has opened the FIFO; stop() closes it so EOF then means "strace is done".
        self._rfd = os.open(self._fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._spare_wfd: int | None = os.open(self._fifo, os.O_WRONLY | os.O_CLOEXEC)
        try:  # a big pipe absorbs bursts while the reader thread parses
            fcntl.fcntl(self._rfd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_SIZE)
        except OSError:
            pass
        self._writes = bool(ctx.settings.get("strace_writes", False))
        if not self._writes:
            self.blind_spots = (*type(self).blind_spots, self.WRITES_BLIND_SPOT)
        self._parser = StraceParser(fd_lifetimes=False,
                                    thread_name=_thread_name if pidns.proc_is_ours() else None)
        self._lock = threading.Lock()
        self._ready: list[Event | ProcessEvent] = []
        self._thread: threading.Thread | None = None
        self._abort = threading.Event()
        self._discarding = False  # abort(): keep draining, keep nothing
        self._records = 0
        self._strace_pid: int | None = None
        self._truncated = False
        self._grace_s = float(ctx.settings.get("leftover_grace_s", LEFTOVER_GRACE_S))
        self._root_exit_seen: float | None = None  # monotonic time poll() first saw it
        self._detached_ns: int | None = None       # wall time strace was stopped
        self._leftovers: dict[int, str] = {}       # pid -> comm, still running then
        self._drained = False
        self._pump_errors = 0
        self._pump_first_error: tuple[str, str] | None = None

    @staticmethod
    def _run_user(ctx: RunContext) -> str | None:
        if ctx.run_uid is None or ctx.run_uid == os.geteuid():
            return None
        if os.geteuid() != 0:
            raise BackendUnavailable("strace -u (run the command as another user) needs root")
        if ctx.run_user:
            return ctx.run_user
        try:  # strace 6.1's -u takes a name only, not a numeric uid
            return pwd.getpwuid(ctx.run_uid).pw_name
        except KeyError:
            raise BackendUnavailable(
                f"uid {ctx.run_uid} has no passwd entry, and strace -u needs a user name"
            ) from None

    def command_prefix(self) -> list[str]:
        """The strace part of the wrapped command line (everything before "--")."""
        cmd = [self._probe.exe or "strace", "-f", "-q", "-yy"]
        cmd.append(NS_TIMESTAMPS if self._probe.ns_timestamps else "-ttt")
        if self._probe.seccomp_bpf:
            cmd.append("--seccomp-bpf")  # stop only on traced syscalls: ~2-3x cheaper
        # No -I: with "-o FILE PROG" strace blocks SIGINT/SIGTERM/SIGHUP/SIGQUIT, so a
        # Ctrl-C forwarded to the command's process group leaves strace tracing pytest's
        # interrupt handling; _detach_leftovers relies on SIGKILL instead.
        traced = TRACE_SET + (WRITES if self._writes else ())
        cmd += ["-e", "signal=none", "-e", "trace=" + ",".join(traced),
                "-s", str(STRING_LIMIT), "-o", self._fifo]
        if self._user:
            cmd += ["-u", self._user]  # strace stays root (ptrace); the command does not
        return cmd

    def wrap_command(self, argv: list[str]) -> list[str]:
        return self.command_prefix() + ["--", *argv]

    def child_started(self, pid: int) -> None:
        # The parser links the command's first process to strace (the runner's child).
        self._strace_pid = pid
        self._parser.root_ppid = pid
        self._thread = threading.Thread(target=self._pump, name="svctrace-strace",
                                        daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        """Drain the FIFO continuously so strace (and so the traced command) never waits
        on us for longer than it takes to parse; parse as we go to keep memory bounded."""
        partial = b""
        while not self._abort.is_set():
            if self._discarding:  # nobody polls any more: the pump ends leftovers' wait
                self._check_leftovers()
            readable, _, _ = select.select([self._rfd], [], [], 0.05)
            if not readable:
                continue
            try:
                chunk = os.read(self._rfd, _READ_CHUNK)
            except BlockingIOError:
                continue
            if not chunk:
                break  # every writer closed: strace exited and stop() dropped the spare
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()  # strace writes half a line while a syscall blocks
            self._parse(lines)
            if len(chunk) < _READ_CHUNK:
                # strace writes line by line; reading in batches every few ms costs far
                # less per line, and the 1 MiB pipe holds seconds of strace output.
                self._abort.wait(_BATCH_WAIT_S)
        if partial:
            self._parse([partial])

    def _parse(self, lines: list[bytes]) -> None:
        records: list[Event | ProcessEvent] = []
        for raw in lines:
            line = raw.decode("utf-8", "surrogateescape")
            try:
                records += self._parser.feed(line)
            except Exception as exc:
                # Never let a line end the pump: strace would block on the full FIFO and,
                # with it, every traced process. Skip it and say so.
                self._pump_errors += 1
                if self._pump_first_error is None:
                    self._pump_first_error = (line[:300], f"{type(exc).__name__}: {exc}")
        if records and not self._discarding:
            with self._lock:
                self._ready += records

    def _take(self) -> list[Event | ProcessEvent]:
        with self._lock:
            ready, self._ready = self._ready, []
        self._records += len(ready)
        return ready

    def poll(self) -> Iterable[Event | ProcessEvent]:
        ready = self._take()
        self._check_leftovers()
        return ready

    def _check_leftovers(self) -> None:
        """The command (strace's first tracee) has exited but strace has not: after the
        grace period, stop strace so the run ends; the leftovers go on untraced."""
        if self._detached_ns is not None or self._strace_pid is None \
                or not self._parser.root_exited:
            return
        now = time.monotonic()
        if self._root_exit_seen is None:
            self._root_exit_seen = now
        if now - self._root_exit_seen >= self._grace_s:
            self._detach_leftovers()

    def _detach_leftovers(self) -> None:
        # strace ignores SIGTERM/SIGINT here (see command_prefix), and -I2, which would let
        # it detach on SIGTERM, would also make it detach on a forwarded Ctrl-C. SIGKILL
        # lets the kernel detach and resume every tracee (strace 6.1 sets no
        # PTRACE_O_EXITKILL); strace flushes each line as it ends it, so all complete
        # lines are already in the FIFO. The runner reaps strace only in its loop, before
        # calling poll(): the pid cannot have been reused.
        self._detached_ns = time.time_ns()
        try:
            os.kill(self._strace_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _drain(self) -> None:
        """strace has exited: read and parse its output up to EOF."""
        if self._drained:
            return
        self._drained = True
        if self._spare_wfd is not None:
            os.close(self._spare_wfd)
            self._spare_wfd = None
        if self._thread is not None:
            # strace has exited (its tracee tree is gone, or it was stopped after the
            # command exited), so EOF follows its last line.
            self._thread.join(_DRAIN_TIMEOUT_S)
            if self._thread.is_alive():  # an escaped writer (strace still running?)
                self._truncated = True
                self._abort.set()
                self._thread.join()

    def command_exit_code(self) -> int | None:
        """The command's own status: strace's differs when it was stopped because of
        leftover processes (or when strace itself failed)."""
        if not self._parser.root_exited and self._thread is not None:
            self._drain()  # the root's exit line may still be in the FIFO
        return self._parser.root_status if self._parser.root_exited else None

    def abort(self) -> Iterable[Event | ProcessEvent]:
        """Nobody will poll again: the pump keeps draining (strace, and so the command,
        must never block on a full pipe) but drops records, and watches for leftover
        processes itself. Killing strace instead would orphan the command and lose its
        exit status (the runner waits on strace). stop() still runs at the end."""
        self._discarding = True
        with self._lock:
            self._ready = []
        return []

    def stop(self) -> Iterable[Event | ProcessEvent]:
        self._drain()
        rest = self._take()
        finished = self._parser.finish()
        self._records += len(finished)
        if self._detached_ns is not None:
            root = self._parser.root_pid
            self._leftovers = {pid: comm for pid, comm in
                               sorted(self._parser.live_processes().items()) if pid != root}
        self._cleanup()
        return rest + finished

    def _cleanup(self) -> None:
        if self._rfd >= 0:
            os.close(self._rfd)
            self._rfd = -1
        shutil.rmtree(self._dir, ignore_errors=True)

    def stats(self) -> dict:
        stats = self._parser.stats
        errors = stats.errors + self._pump_errors
        first = stats.first_error or self._pump_first_error
        notes = []
        if errors and first:
            notes.append(f"{errors} strace lines were skipped because the parser failed on "
                         f"them (first: {first[1]} on {first[0]!r}): traffic in them is "
                         "missing from this report")
        leftovers = self._leftover_stats()
        return {
            "events": self._records,
            "lost_events": 0,  # ptrace stops the tracee until strace has written the line
            "lines": stats.lines,
            "seccomp_bpf": self._probe.seccomp_bpf,
            "unparsed_lines": stats.unparsed,
            "unresolved_sends": stats.unresolved_sends,
            "truncated": self._truncated,
            "parser_errors": errors,
            "leftover_processes_detached": self._detached_ns is not None,
            **leftovers,
            **({"notes": notes + leftovers.get("notes", [])}
               if notes or leftovers.get("notes") else {}),
        }

    def _leftover_stats(self) -> dict:
        if self._detached_ns is None:
            return {}
        shown = ", ".join(f"{pid} ({comm})" if comm else str(pid)
                          for pid, comm in list(self._leftovers.items())[:10])
        more = len(self._leftovers) - 10
        note = (f"the command exited but processes it started were still running "
                f"{self._grace_s:g} s later ({shown or 'pids unknown'}"
                f"{f', and {more} more' if more > 0 else ''}): strace was stopped and they "
                "were left running untraced; their network activity after that is not in "
                "this report")
        if self._probe.seccomp_bpf:
            note += ("; under --seccomp-bpf the system calls strace traced (connect, sends, "
                     "clone, execve, set_robust_list, ...) now fail with ENOSYS in them")
        return {"leftover_processes": [{"pid": pid, "comm": comm}
                                       for pid, comm in self._leftovers.items()],
                "leftover_detached_at_ns": self._detached_ns,
                "notes": [note]}
