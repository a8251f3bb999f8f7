"""Who writes to the run's marker pipe: the pytest process that owns it and its xdist workers."""
from __future__ import annotations

import os
import time

import pytest

from pytest_svctrace.workers import OWNER_KEY
from svctrace.contract import ENV_OWNER
from svctrace.events import ProcessEvent


def role(config: pytest.Config) -> str:
    """"owner" (no pytest owns the pipe yet), "worker" (an xdist worker of the owner), or
    "nested": a pytest run inside a test of the owner (pytester in process or as a
    subprocess, a test that runs `python -m pytest`, the workers of such a run). A nested
    run's node ids are not the run's: it must not write markers."""
    owner = os.environ.get(ENV_OWNER)
    if not owner:
        return "owner"
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(OWNER_KEY) == owner:
        return "worker"
    return "nested"


def claim() -> None:
    # The one change to os.environ: processes started by tests (a pytest subprocess,
    # xdist's workers) inherit only the environment, and must learn that this process owns
    # the pipe before they open it. Undone by release().
    os.environ[ENV_OWNER] = str(os.getpid())


def release() -> None:
    if os.environ.get(ENV_OWNER) == str(os.getpid()):
        del os.environ[ENV_OWNER]


def _parent(pid: int) -> int | None:
    # Read raw, not through psutil: the plugin runs in the user's pytest, whose environment
    # (a venv svctrace is not installed in) may lack psutil.
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def ancestry(owner: str) -> list[ProcessEvent]:
    """Fork records from this process up to the owner: the in-process backend has no
    kernel view of the process tree, and attribution follows parents to the owner's test."""
    if not owner.isdigit():
        return []
    now_mono, now_wall = time.monotonic_ns(), time.time_ns()
    records, pid, stop = [], os.getpid(), int(owner)
    while pid != stop and pid > 1 and len(records) < 64:
        parent = _parent(pid)
        if parent is None:
            break
        records.append(ProcessEvent("fork", now_mono, now_wall, pid, parent))
        pid = parent
    return records
