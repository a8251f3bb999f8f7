"""The one Backend protocol every tracer implements, and the errors they raise."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable

from svctrace.errors import BackendFailed, BackendUnavailable, SvctraceError
from svctrace.events import Event, ProcessEvent

__all__ = ["Backend", "BackendFailed", "BackendUnavailable", "RunContext", "SvctraceError"]


@dataclass
class RunContext:
    """What the runner tells a backend before the command starts."""

    command: list[str]
    run_uid: int | None = None    # uid the command will run as (None: unchanged)
    run_gid: int | None = None
    run_user: str | None = None
    settings: dict = field(default_factory=dict)  # backend-specific, from [tool.svctrace]
    marker_pipe: str | None = None  # the FIFO the plugin writes markers to (run/markerpipe)


class Backend:
    """Interface of a tracing backend (subclass it).

    Life cycle, driven by the runner:
      prepare(ctx)            load/compile whatever is needed; may raise BackendUnavailable
      wrap_command(argv)      argv actually executed (strace wraps; others return argv)
      child_started(pid)      the command's process exists, blocked in a read() of a gate
                              pipe, not exec'd yet: trace it from that read's return on
                              (the runner releases it only after this returns)
      poll()                  called every ~20 ms while the command runs; returns new records
      stop()                  command exited: drain what is left, detach, return the rest
      abort()                 poll() failed while the command runs: detach at once
      stats()                 {"events": n, "lost_events": n, ...} for the report
      command_exit_code()     the command's status, if the waited-for process is a wrapper
    Without an instance: prepare_host(), unavailable_reason(), diagnose() (for doctor).
    """

    name: ClassVar[str] = "?"
    clock: ClassVar[str] = "mono"  # which timestamp of Event/ProcessEvent it fills
    blind_spots: ClassVar[tuple[str, ...]] = ()
    # True when the wrapper the backend runs (strace -u) switches to ctx.run_uid itself, so
    # the runner must start it with its own privileges.
    drops_privileges: ClassVar[bool] = False

    @classmethod
    def prepare_host(cls) -> list[str]:
        """Fix what svctrace may fix itself before the availability check (as root: mount
        tracefs); one note per action taken, for the log and the report."""
        return []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if usable here, else one sentence: what is missing and how to fix it."""
        return None

    @classmethod
    def diagnose(cls) -> list[tuple[str, bool, str]]:
        """(check, ok, detail or fix) lines for `svctrace doctor`, beyond usable or not."""
        return []

    def prepare(self, ctx: RunContext) -> None:
        self.ctx = ctx

    def wrap_command(self, argv: list[str]) -> list[str]:
        return argv

    def child_started(self, pid: int) -> None:
        pass

    def poll(self) -> Iterable[Event | ProcessEvent]:
        return ()

    def stop(self) -> Iterable[Event | ProcessEvent]:
        return ()

    def abort(self) -> Iterable[Event | ProcessEvent]:
        """Polling failed while the command runs: detach now, so nothing waits on a
        consumer that is gone (a full strace pipe would block every tracee), and return
        what can still be read. The command goes on untraced."""
        return self.stop()

    def stats(self) -> dict:
        return {}

    def notes(self) -> list[str]:
        """What the user should know about how this run was traced (run.notes)."""
        return []

    def command_exit_code(self) -> int | None:
        """The traced command's own exit status when the process the runner waited for is a
        wrapper (strace) whose status may differ; None to use the waited-for status."""
        return None
