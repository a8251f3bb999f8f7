"""Memory check: tests whose sender subprocess makes unfoldable sends (the harness turns
kernel_join off for it: one ring buffer record each)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

CFG = json.loads(os.environ.get("SVCTRACE_BENCH_MEMORY", "{}"))


@pytest.mark.parametrize("chunk", range(int(CFG.get("chunks", 1))))
def test_unfolded_sends(chunk):
    out = subprocess.run(CFG["sender"] + [CFG["host"], str(CFG["port"]), str(CFG["procs"]),
                                          str(CFG["rate"]), str(CFG["chunk_s"]), "unfold"],
                         check=True, capture_output=True, text=True).stdout
    with open(CFG["result"], "a") as fh:
        fh.write(out.strip() + "\n")
