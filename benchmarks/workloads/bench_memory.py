"""Memory check: tests whose sender subprocess sends to a new destination every send (spread
mode: one ring buffer record each, however the kernel side folds)."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

CFG = json.loads(os.environ.get("SVCTRACE_BENCH_MEMORY", "{}"))


@pytest.mark.parametrize("chunk", range(int(CFG.get("chunks", 1))))
def test_one_record_sends(chunk):
    out = subprocess.run(CFG["sender"] + [CFG["host"], str(CFG["port"]), str(CFG["procs"]),
                                          str(CFG["rate"]), str(CFG["chunk_s"]), "spread"],
                         check=True, capture_output=True, text=True).stdout
    with open(CFG["result"], "a") as fh:
        fh.write(out.strip() + "\n")
