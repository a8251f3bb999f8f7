"""Smoke run of the benchmark harness (`python -m benchmarks`) on tiny sizes: it runs, and
reports ratios for every usable backend. Not a timing assertion."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from svctrace.capture import availability

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


def test_memory_workload_samples_the_tracer_at_its_progress_lines(tmp_path, services):
    # The progress lines appear in pytest's output (the plugin prints them): the memory
    # figures are read from them, and were "- at - events" when only stderr was read.
    if availability().get("ebpf") is not None:
        pytest.skip(f"the memory workload traces with eBPF: {availability()['ebpf']}")
    out_json = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--only", "memory", "--rounds", "1",
         "--size", "memory=60000", "--size", "memory_rate=20000",
         "--json", str(out_json), "--markdown", str(tmp_path / "results.md")],
        cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    memory = json.loads(out_json.read_text())["memory"]
    assert memory["lost_events"] == 0 and memory["records"] >= 60000
    assert len(memory["progress"]) >= 2
    assert memory["start"]["rss_bytes"] > 0 and memory["end"]["events"] > \
        memory["start"]["events"] > 0


def test_runner_replay_decodes_and_attributes_every_line():
    # replay() asserts that no line was bad and markers were attributed
    done = subprocess.run([sys.executable, "-m", "benchmarks.runner_replay", "--tests", "50",
                           "--repeat", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replaying 50 tests: 250 marker lines" in done.stdout  # a TestInfo, 4 PhaseEdges
    assert done.stdout.count("µs a line") == 2
    earlier = subprocess.run([sys.executable, "-m", "benchmarks.runner_replay", "--tests", "50",
                              "--repeat", "1", "--markers"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    assert "replaying 50 tests: 450 marker lines" in earlier.stdout  # the earlier Markers
