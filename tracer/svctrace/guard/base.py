"""The protocol of a tier guard: a second tracer beside the backend, one that also refuses."""
from __future__ import annotations

from typing import Iterable, Protocol

from svctrace.events import Event
from svctrace.guard.rules import DenySpec


class Enforcer(Protocol):
    """What the runner and `svctrace doctor` use of a guard.

    Life cycle, driven by the runner (as a Backend's, but for refusals):
      start()             its cgroup and programs, before the command forks
      enter(pid)          the forked command (still gated) joins what is guarded
      poll()              every ~20 ms while the command runs: refusals since the last call
      stop()              the command exited, or anything failed: drain, detach, clean up;
                          idempotent
      learn(lookup)       a name the run resolved: refuse its addresses if a denied
                          service's rule names that host (refuses_by_name() says if any)
      stats()             run.guard in the report
    """

    spec: DenySpec
    notes: list[str]  # what the user should know (run.notes)
    shadow: bool      # records what it would refuse, refuses nothing (run --shadow)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if the guard can work here, else what is missing and the fix."""

    @classmethod
    def diagnose(cls) -> list[tuple[str, bool, str]]:
        """(check, ok, detail or fix) lines for `svctrace doctor`."""

    def start(self) -> None: ...
    def enter(self, pid: int) -> None: ...
    def poll(self) -> Iterable[Event]: ...
    def stop(self) -> Iterable[Event]: ...
    def stats(self) -> dict: ...
    def refuses_by_name(self) -> bool: ...
    def learn(self, lookup) -> None: ...
