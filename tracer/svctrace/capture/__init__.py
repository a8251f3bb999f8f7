"""Backend registry and the one function that chooses a backend (`auto|ebpf|strace|inprocess`)."""
from __future__ import annotations

import importlib

from svctrace.capture.base import Backend, BackendUnavailable

# Preference order for `auto`: the kernel sees everything, strace nearly so, the patch least.
ORDER = ("ebpf", "strace", "inprocess")
_CLASSES = {
    "ebpf": "svctrace.capture.ebpf:EbpfBackend",
    "strace": "svctrace.capture.strace:StraceBackend",
    "inprocess": "svctrace.capture.inprocess:InprocessBackend",
}
CHOICES = ("auto",) + ORDER


def backend_class(name: str) -> type[Backend]:
    if name not in _CLASSES:
        raise BackendUnavailable(
            f"unknown backend {name!r}: choose one of {', '.join(CHOICES)}")
    module, _, attr = _CLASSES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def _reason(name: str) -> str | None:
    """None if backend `name` is usable here, else why not."""
    try:
        return backend_class(name).unavailable_reason()
    except Exception as exc:  # a broken backend module must not hide the others
        return f"cannot load the {name} backend: {exc}"


def availability() -> dict[str, str | None]:
    """{name: None if usable else the reason it is not}, in preference order, as things
    stand (nothing prepared: see `prepare_and_check` for what `svctrace run` would find)."""
    return {name: _reason(name) for name in ORDER}


def prepare_and_check(name: str) -> tuple[list[str], str | None]:
    """What `svctrace run` does to learn whether backend `name` works here: prepare the host
    as it may (as root, mount a missing tracefs), then check. (notes, None or why not).
    `svctrace doctor` calls this too, so its answer is the run's."""
    try:
        notes = list(backend_class(name).prepare_host())
    except Exception as exc:  # a broken backend module must not hide the others
        notes = [f"cannot prepare the {name} backend: {exc}"]
    return notes, _reason(name)


def select_backend(requested: str) -> tuple[type[Backend], list[str]]:
    """Return (backend class, notes). An explicit unusable choice raises; `auto` falls back
    and says why each better backend was skipped."""
    if requested != "auto":
        cls = backend_class(requested)
        notes, reason = prepare_and_check(requested)
        if reason:
            raise BackendUnavailable(f"can't use backend={requested}: {reason}")
        return cls, notes
    # Each backend is prepared and checked in turn: those after the first usable one are
    # not even imported (the strace and in-process modules cost an eBPF run ~8 ms).
    notes = []
    for name in ORDER:
        prepared, reason = prepare_and_check(name)
        notes += prepared
        if reason is None:
            notes.append(f"backend auto: using {name}")
            return backend_class(name), notes
        notes.append(f"backend auto: skipped {name}: {reason}")
    raise BackendUnavailable("no backend is usable: " + "; ".join(notes))
