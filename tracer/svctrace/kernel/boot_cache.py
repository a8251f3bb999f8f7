"""Files kept until reboot in /run/svctrace (a tmpfs), trusted only when root wrote them.

What is kept here decides what the kernel runs (struct offsets, compiled BPF programs), so
only root writes, and a file is believed only when root owns it and its folder and nobody
else can write either. A file that fails the checks is ignored, never an error: losing
the cache costs the next run its start-up time, nothing else.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

DIR = Path("/run/svctrace")


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def read(name: str) -> bytes | None:
    """The kept file's bytes, or None (missing, unreadable or not trustworthy)."""
    try:
        fd = os.open(DIR / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) and _trusted(st) and _trusted(DIR.stat())):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    except OSError:
        return None
    finally:
        os.close(fd)


def write(name: str, data: bytes, mode: int = 0o600) -> bool:
    """Keep data under name (as root only; atomically); False when it could not."""
    if os.geteuid() != 0:
        return False
    tmp = DIR / f".{name}.{os.getpid()}"
    try:
        DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not _trusted(DIR.stat()):
            return False
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
        os.replace(tmp, DIR / name)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def prune(prefix: str, keep: int) -> None:
    """Keep only the `keep` newest files named prefix*: keys that vary (a container's PID
    namespace, a test's map sizes) would otherwise pile up in a tmpfs until reboot."""
    if os.geteuid() != 0:
        return
    try:
        kept = sorted((p for p in DIR.glob(f"{prefix}*") if p.is_file()),
                      key=lambda p: p.stat().st_mtime_ns, reverse=True)
    except OSError:
        return
    for path in kept[keep:]:
        try:
            path.unlink()
        except OSError:
            pass
