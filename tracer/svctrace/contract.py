"""The runner/plugin contract: environment variables `svctrace run` sets for the command (pure).

The runner and the pytest plugin both import these names; neither spells them itself.
"""
from __future__ import annotations

import os

# Path of the marker FIFO every pytest process of the run writes to (wire.py records).
ENV_PIPE = "SVCTRACE_PIPE"
# The backend that runs ("ebpf", "strace", "inprocess"): inprocess makes the plugin patch.
ENV_BACKEND = "SVCTRACE_BACKEND"
# Pid of the pytest process that owns the pipe. A pytest started below it that is not one
# of its xdist workers (pytester's runpytest_subprocess, a test that runs pytest) leaves the
# pipe alone: its node ids are not the run's. The owner's own xdist workers are told
# apart by workerinput["svctrace_owner"], which the owner fills (plugin/owner.py).
ENV_OWNER = "SVCTRACE_PIPE_OWNER"


def progress_path(pipe: str) -> str:
    """The file next to the marker pipe where the runner leaves its progress line; the
    owner pytest prints it between tests with its own terminal writer, then removes it,
    so the line never lands inside pytest's dot line."""
    return os.path.join(os.path.dirname(pipe), "progress")
# "1" under `svctrace run --stacks` with the in-process backend: the plugin takes the
# Python stack of each first contact inside the patched socket call itself.
ENV_STACKS = "SVCTRACE_STACKS"
# `svctrace run --plan PLAN --tier NAME [--shard I/N]`: the owner pytest (and its xdist
# workers) keep only that tier's tests, as `--svctrace-plan/--svctrace-tier/--svctrace-shard`
# do; the plugin copied by the runner reads them, so the project's venv needs no svctrace.
ENV_PLAN = "SVCTRACE_PLAN"     # absolute path of the plan
ENV_TIER = "SVCTRACE_TIER"
ENV_SHARD = "SVCTRACE_SHARD"   # "I/N", or absent
# Path of a file of node ids, one a line (`svctrace prove`): the pytest that owns the run
# and its xdist workers keep only those tests, by pytest's own collection; a nested pytest
# (a test that runs pytest) is left alone.
ENV_SELECT = "SVCTRACE_SELECT"
SELECTION = (ENV_PLAN, ENV_TIER, ENV_SHARD, ENV_SELECT)
