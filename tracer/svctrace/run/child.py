"""The traced command's process: who it runs as, its environment, its gated exec, its exit."""
from __future__ import annotations

import os
import pwd
import signal
from dataclasses import dataclass, field

from svctrace.contract import ENV_BACKEND, ENV_OWNER, ENV_PIPE, ENV_STACKS, SELECTION
from svctrace.userfiles import invoking_user

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
                      stacks: bool = False, selection: dict | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_PIPE] = pipe
    env[ENV_BACKEND] = backend
    env.pop(ENV_OWNER, None)  # a run inside a traced test has a pipe (and owner) of its own
    env.pop(ENV_STACKS, None)
    for name in SELECTION:  # ... and the tier it was given, not the outer run's
        env.pop(name, None)
    env.update(selection or {})
    if stacks and backend == "inprocess":
        env[ENV_STACKS] = "1"
    if ident.drops:
        env.update({"HOME": ident.home or "/", "USER": ident.user or str(ident.uid),
                    "LOGNAME": ident.user or str(ident.uid)})
        env.pop("SUDO_COMMAND", None)
    return env


def exec_child(argv: list[str], env: dict, ident: Identity, gate_r: int, gate_w: int) -> None:
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


def exit_status(pid: int) -> int | None:
    """The command's exit code once it has ended (128 + signal if killed), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 1
    if not done:
        return None
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) \
        else 128 + os.WTERMSIG(status)


def reap(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


class SignalForwarder:
    """While the command runs, signals sent to the runner go to the command's whole process
    group; the runner stays up to write the report."""

    def __init__(self) -> None:
        self.pid = 0
        self.received: list[int] = []
        self._previous: dict = {}

    def install(self, pid: int) -> None:
        self.pid = pid
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        self.received.append(signum)
        if self.pid:
            try:
                os.killpg(self.pid, signum)  # the command's whole process group
            except ProcessLookupError:
                pass

    def note(self) -> str | None:
        if not self.received:
            return None
        names = sorted({signal.Signals(s).name for s in self.received})
        return f"received {', '.join(names)}: forwarded to the command"
