"""Where tracefs is, whether this user may read it, and mounting it where it is missing."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

DIRS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


def find() -> Path | None:
    """The mounted tracefs this process can read, or None (not mounted, or not readable:
    the kernel mounts it mode 0700, so for a non-root user it is never readable)."""
    for path in DIRS:
        try:
            if (path / "events").is_dir():
                return path
        except PermissionError:
            continue
    return None


def unreadable() -> Path | None:
    """A tracefs folder that exists but this user may not enter (mode 0700, not root)."""
    for path in DIRS:
        try:
            (path / "events").is_dir()
        except PermissionError:
            return path
    return None


def mount() -> str | None:
    """As root, mount tracefs where it is missing (a fresh container, `ip netns exec`, which
    remounts /sys): the note saying so, or None when nothing was done. Both the tracer and
    the guard need it: their programs attach to syscall tracepoints."""
    if os.geteuid() != 0 or find() is not None:
        return None
    target = DIRS[0]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"tracefs", str(target).encode(), b"tracefs", 0, None) != 0:
        err = ctypes.get_errno()
        return f"could not mount tracefs at {target}: {os.strerror(err)}"
    return f"mounted tracefs at {target} (it was not mounted in this mount namespace)"
