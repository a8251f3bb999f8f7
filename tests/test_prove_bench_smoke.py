"""Smoke run of benchmarks.prove_cost on a tiny suite: it runs and reports the ratio of a
proof to the plain traced run. Not a timing assertion."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support.backends import needs_backend as needs

REPO = Path(__file__).resolve().parents[1]


@needs("ebpf")
def test_prove_cost_benchmark_reports_the_ratio(tmp_path, services):
    out = tmp_path / "prove.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.prove_cost", "--tests", "8",
                           "--rounds", "1", "--services", "postgres", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["schema"] == "svctrace-bench/1"
    prove = result["prove"]
    assert prove["reruns"] == 2 and prove["test_executions"] == 8  # 4 postgres tests, twice
    assert prove["prove_to_plain"]["median"] > 0
    assert "| prove / plain |" in done.stdout
