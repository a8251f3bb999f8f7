"""Whether each backend can run here, as skip marks whose reason names what is missing."""
from __future__ import annotations

import pytest

from svctrace.capture import availability

AVAILABLE = availability()
BEST = next((name for name, reason in AVAILABLE.items() if reason is None), None)


def backend_marks(name: str) -> list:
    """The marks of a test that needs backend `name`: its category (ebpf/strace, see
    pyproject's markers) and a skip that applies only where the backend is unusable."""
    reason = AVAILABLE[name]
    marks = [pytest.mark.skipif(reason is not None, reason=f"{name} backend unusable: {reason}")]
    if name in ("ebpf", "strace"):
        marks.insert(0, getattr(pytest.mark, name))
    return marks


def needs_backend(name: str):
    """Decorator form of backend_marks()."""
    def apply(fn):
        for mark in backend_marks(name):
            fn = mark(fn)
        return fn
    return apply
