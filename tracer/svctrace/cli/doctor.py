"""`svctrace doctor`: one line per backend (usable, or the exact reason and fix), then details."""
from __future__ import annotations

from svctrace.capture import ORDER, backend_class, prepare_and_check


def _details(name: str) -> list[tuple[str, bool, str]]:
    try:
        cls = backend_class(name)
    except Exception as exc:
        return [(f"import svctrace.capture.{name}", False, str(exc))]
    try:
        return list(cls.diagnose())
    except Exception as exc:  # a check that cannot run is a line of its own, not a traceback
        return [("checks", False, f"could not run them: {type(exc).__name__}: {exc}")]


def doctor_lines() -> list[tuple[str, bool]]:
    """(line, ok) pairs; ok is False only where the preferred backend is unusable."""
    lines, status, notes = [], {}, {}
    # Prepared and checked as `svctrace run` does (as root it mounts a missing tracefs):
    # doctor answers what run would do, from the same code.
    for name in ORDER:
        notes[name], status[name] = prepare_and_check(name)
    for name, reason in status.items():
        if reason is None:
            lines.append((f"{name:10s} usable", True))
        else:
            # Exit status 1 when the preferred (kernel) backend is missing: CI can gate on it.
            lines.append((f"{name:10s} NOT usable: {reason}", name != "ebpf"))
    chosen = next((n for n, r in status.items() if r is None), None)
    lines.append((f"auto       would use {chosen or 'nothing'}", chosen is not None))
    for name in status:
        lines += [(f"  {name}: did  {note}", True) for note in notes[name]]
        for check, ok, detail in _details(name):
            lines.append((f"  {name}: {'ok  ' if ok else 'FAIL'} {check}"
                          + (f": {detail}" if detail else ""), True))
    lines += guard_lines()
    return lines


def guard_lines() -> list[tuple[str, bool]]:
    """Can `svctrace run --deny/--allow/--guard` refuse services here? It does not change
    doctor's exit status: tracing works without it."""
    try:
        from svctrace.guard.kernel import Guard
        checks = Guard.diagnose()
    except Exception as exc:
        checks = [("guard", False, f"cannot load the guard: {exc}")]
    usable = all(ok for _check, ok, _detail in checks)
    failed = next((detail for _check, ok, detail in checks if not ok), "")
    lines = [("guard      usable (--deny, --allow, --guard)" if usable else
              f"guard      NOT usable: {failed}", True)]
    for check, ok, detail in checks:
        lines.append((f"  guard: {'ok  ' if ok else 'FAIL'} {check}"
                      + (f": {detail}" if detail else ""), True))
    return lines
