"""The kernel struct offsets the eBPF program needs, kept between runs.

Reading them from vmlinux BTF costs ~0.1 s of every run's start. They change only with the
kernel, so a run keeps them until reboot (boot_cache), keyed by the kernel's release,
build and BTF blob: the offsets decide what the BPF program reads.
"""
from __future__ import annotations

import json
import os

from svctrace.kernel import boot_cache, btf

NAME = "btf-offsets.json"


def kernel_key() -> str | None:
    try:
        blob = btf.VMLINUX.stat()
    except OSError:
        return None
    uname = os.uname()
    return f"{uname.release} {uname.version} {blob.st_size} {blob.st_mtime_ns}"


def load(names: set[str]) -> dict[str, int] | None:
    """The cached offsets for this kernel with exactly these -D names, or None."""
    key = kernel_key()
    raw = boot_cache.read(NAME) if key is not None else None
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        offsets = data["offsets"]
        if data.get("kernel") != key or set(offsets) != names or \
                not all(type(v) is int for v in offsets.values()):
            return None
        return offsets
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def store(offsets: dict[str, int]) -> None:
    """Keep them for the next run (as root; a failure only costs the next run 0.1 s)."""
    key = kernel_key()
    if key is not None:
        boot_cache.write(NAME, json.dumps({"kernel": key, "offsets": offsets}).encode(),
                         0o644)
