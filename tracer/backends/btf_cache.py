"""The kernel struct offsets the eBPF program needs, kept between runs (issue 13).

Reading them from vmlinux BTF costs ~0.1 s of every run's start. They change only with the
kernel, so a run keeps them in /run (a tmpfs: gone at reboot), keyed by the kernel's
release, build and BTF blob. Only root writes the file, and only a file root owns that
nobody else can write is believed: the offsets decide what the BPF program reads.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from svctrace.backends import btf

CACHE = Path("/run/svctrace/btf-offsets.json")


def kernel_key() -> str | None:
    try:
        blob = btf.VMLINUX.stat()
    except OSError:
        return None
    uname = os.uname()
    return f"{uname.release} {uname.version} {blob.st_size} {blob.st_mtime_ns}"


def _trusted(st: os.stat_result) -> bool:
    return st.st_uid == 0 and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def load(names: set[str]) -> dict[str, int] | None:
    """The cached offsets for this kernel with exactly these -D names, or None."""
    key = kernel_key()
    if key is None:
        return None
    try:
        with open(CACHE, encoding="utf-8") as fh:
            if not (_trusted(os.fstat(fh.fileno())) and _trusted(CACHE.parent.stat())):
                return None
            data = json.load(fh)
        offsets = data["offsets"]
        if data.get("kernel") != key or set(offsets) != names or \
                not all(type(v) is int for v in offsets.values()):
            return None
        return offsets
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(offsets: dict[str, int]) -> None:
    """Keep them for the next run (as root; a failure only costs the next run 0.1 s)."""
    key = kernel_key()
    if key is None or os.geteuid() != 0:
        return
    tmp = CACHE.with_name(f".{CACHE.name}.{os.getpid()}")
    try:
        CACHE.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o644)
            json.dump({"kernel": key, "offsets": offsets}, fh)
        os.replace(tmp, CACHE)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
