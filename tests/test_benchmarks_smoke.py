"""Smoke run of the benchmark harness (`python -m benchmarks`) on tiny sizes: it runs, and
reports ratios for every usable backend. Not a timing assertion."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from svctrace.backends import availability

REPO = Path(__file__).resolve().parents[1]


def test_quick_benchmark_reports_every_usable_backend(tmp_path, services):
    out_json, out_md = tmp_path / "results.json", tmp_path / "results.md"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "cpu,redis", "--rounds", "1",
         "--json", str(out_json), "--markdown", str(out_md)],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    usable = [name for name, reason in availability().items() if reason is None]
    results = json.loads(out_json.read_text())
    assert results["schema"] == "svctrace-bench/1"
    assert results["backends"] == usable
    assert not results["errors"]
    for workload in ("cpu", "redis"):
        backends = results["micro"][workload]["backends"]
        assert sorted(backends) == sorted(usable)
        for name in usable:
            assert backends[name]["cpu_ratio"]["median"] > 0, (workload, name)
            assert backends[name]["wall_ratio"]["median"] > 0, (workload, name)
    for name in usable:  # every backend sees redis-py's Python sockets
        assert results["micro"]["redis"]["backends"][name]["sees_service"] is True, name
        assert results["micro"]["redis"]["backends"][name]["events_seen"] >= 1000, name
    table = out_md.read_text()
    assert "| redis: " in table and table in done.stdout
