"""End to end: the join in the kernel (kernel_join) changes what reaches user space, never
the report: the same suites with it on and off, and a connection storm."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import e2e
from tests.support.backends import backend_marks

pytestmark = backend_marks("ebpf")

JOIN_OFF = "kernel_join = false\n"


def _with_join_off(suite: Path) -> None:
    path = suite / "pyproject.toml"
    text = path.read_text()
    assert text.count("[tool.svctrace]\n") == 1, text
    path.write_text(text.replace("[tool.svctrace]\n", "[tool.svctrace]\n" + JOIN_OFF))


def _both(tmp_path: Path, make_suite, env: dict, pytest_args: tuple = ()
          ) -> tuple[dict, dict]:
    """The reports of one suite with the join on and off (each in its own copy)."""
    reports = []
    for join in (True, False):
        suite = make_suite(tmp_path / ("on" if join else "off"))
        if not join:
            _with_join_off(suite)
        report, proc = e2e.run_svctrace("ebpf", suite, env, pytest_args, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert report["run"]["lost_events"] == 0
        reports.append(report)
    return reports[0], reports[1]


# What legitimately differs between two runs of one suite: times, pids, ports of listeners
# the suite opens itself, and how many records the kernel sent (the join's whole point).
_EVIDENCE_DROPPED = ("first", "processes")
_COUNTS = ("connects", "sends", "failed_connects")


def _evidence(evidence: dict, timing_dependent: bool) -> None:
    for key in _EVIDENCE_DROPPED:
        evidence.pop(key, None)
    if timing_dependent:
        # retries on a timer (librdkafka's reconnect backoff): whether, not how often
        for key in (*_COUNTS, "threads", "background"):
            evidence[key] = bool(evidence.get(key))
        for entry in evidence.get("by_destination", {}).values():
            for key in _COUNTS:
                entry[key] = entry[key] > 0
            entry["errors"] = sorted(entry["errors"])


def _normalized(report: dict, timing_dependent: frozenset = frozenset()) -> dict:
    out = json.loads(json.dumps(report))
    out.pop("run")
    for nodeid, test in out["tests"].items():
        test.pop("duration_s", None)
        test.pop("worker", None)  # xdist's scheduling
        timing = nodeid.rsplit("::", 1)[-1] in timing_dependent
        for evidence in test["evidence"].values():
            _evidence(evidence, timing)
        for why, labels in test.get("ignored", {}).items():
            # labels name random ports; counts of timer-driven clients vary
            test["ignored"][why] = bool(labels) if timing else sorted(labels.values())
    for fixture in out.get("fixtures", {}).values():
        for evidence in fixture.get("evidence", {}).values():
            _evidence(evidence, False)
    for entry in out["unattributed"]:
        for evidence in entry.get("evidence", {}).values():
            _evidence(evidence, False)
    out["destinations"] = {label: entry for label, entry in out["destinations"].items()
                           if not entry.get("suite_listener")}
    for entry in out["destinations"].values():
        # A socket that reuses a freed one's kernel address within a phase is not known
        # as new (join or not): its first bytes are not read, in some runs only.
        entry.pop("connections", None)
    return out


def _records(report: dict) -> int:
    return report["run"]["backend_stats"]["events"]


# librdkafka reconnects on a timer; a spawned interpreter's start-up and a thread's
# pacing are the run's own: their counts differ between any two runs, join or not
_SAMPLE_TIMING = frozenset({"test_kafka_refused", "test_kafka_mock_broker",
                            "test_kafka_inprocess_mock_is_not_a_service"})


def test_sample_suite_reports_the_same_with_the_join_on_and_off(tmp_path, sample_env):
    on, off = _both(tmp_path, lambda root: e2e.copy_suite(root, sample_env), sample_env)
    assert _normalized(on, _SAMPLE_TIMING) == _normalized(off, _SAMPLE_TIMING)


def test_sample_suite_under_xdist_reports_the_same_with_the_join_on_and_off(tmp_path,
                                                                             sample_env):
    on, off = _both(tmp_path, lambda root: e2e.copy_suite(root, sample_env), sample_env,
                    ("-n", "2", "--dist", "loadfile"))
    assert _normalized(on, _SAMPLE_TIMING) == _normalized(off, _SAMPLE_TIMING)


TINY_TESTS = 2000


def _tiny_suite(root: Path, env: dict) -> Path:
    """TINY_TESTS one-line tests over a few files, a quarter of them touching Redis."""
    root.mkdir(parents=True)
    (root / "pyproject.toml").write_text(
        f'[tool.svctrace]\n[tool.svctrace.services]\nredis = ["{env["_REDIS_PORT"]}"]\n')
    (root / "conftest.py").write_text(
        "import os\nimport pytest\nimport redis\n\n\n"
        "@pytest.fixture(scope='session')\ndef client():\n"
        "    c = redis.Redis.from_url(os.environ['SVCTRACE_REDIS_URL'])\n"
        "    yield c\n    c.close()\n")
    per_file = 250
    for f in range(TINY_TESTS // per_file):
        body = ["import pytest\n"]
        for j in range(per_file):
            i = f * per_file + j
            if i % 4 == 0:
                body.append(f"\n\ndef test_{i:05d}_redis(client):\n    client.ping()\n")
            else:
                body.append(f"\n\ndef test_{i:05d}(): assert {i} + 1 > {i}\n")
        (root / f"test_tiny_{f}.py").write_text("".join(body))
    return root


def test_tiny_suite_reports_the_same_with_the_join_on_and_off(tmp_path, services):
    env = {"SVCTRACE_REDIS_URL": services["redis_url"],
           "_REDIS_PORT": str(services["redis_port"])}
    on, off = _both(tmp_path, lambda root: _tiny_suite(root, env), env)
    assert len(on["tests"]) == TINY_TESTS
    assert _normalized(on) == _normalized(off)
    assert sum(test["services"] == ["redis"] for test in on["tests"].values()) \
        == TINY_TESTS // 4


STORM = 3000  # connections per process

STORM_TEST = f'''\
import multiprocessing
import os
import socket
import threading

PORT = int(os.environ["SERVICE_PORT"])


def storm():
    for _ in range({STORM}):
        with socket.socket() as sock:
            sock.connect(("127.0.0.1", PORT))  # an address: no getaddrinfo (nss) record
            sock.sendall(b"ping")


def test_storm():
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=storm) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
'''


def _storm_reports(tmp_path: Path) -> tuple[dict, dict]:
    """The storm with the join on and off, against one listener of the test's own in its
    own process (untraced, so the storm is the only traffic; it accepts and drains)."""
    listener = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, threading\n"
         "s = socket.create_server(('127.0.0.1', 0), backlog=4096)\n"
         "print(s.getsockname()[1], flush=True)\n"
         "def drain(c):\n    with c:\n        while c.recv(64): pass\n"
         "while True:\n    c, _ = s.accept()\n"
         "    threading.Thread(target=drain, args=(c,)).start()\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        reports = []
        for join in (True, False):
            root = tmp_path / ("on" if join else "off")
            root.mkdir()
            (root / "test_storm.py").write_text(STORM_TEST)
            (root / "pyproject.toml").write_text(
                "[tool.svctrace]\n" + ("" if join else JOIN_OFF)
                + f'[tool.svctrace.services]\nstorm = ["127.0.0.1:{port}"]\n')
            proc = subprocess.run(
                [*e2e.SVCTRACE, "run", "--backend", "ebpf", "-o", "r.json", "--progress",
                 "0", "--", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                cwd=root, capture_output=True, text=True, timeout=600,
                stdin=subprocess.DEVNULL, env={**e2e.child_env({}), "SERVICE_PORT": str(port)})
            assert proc.returncode == 0, proc.stdout + proc.stderr
            reports.append(json.loads((root / "r.json").read_text()))
        return reports[0], reports[1]
    finally:
        listener.kill()
        listener.wait()


def test_a_connection_storm_reports_the_same_counts_from_far_fewer_records(tmp_path):
    on, off = _storm_reports(tmp_path)
    for report in (on, off):
        assert report["run"]["lost_events"] == 0
        storm = report["tests"]["test_storm.py::test_storm"]["evidence"]["storm"]
        assert storm["connects"] == 2 * STORM
        assert storm["sends"] == 2 * STORM
        assert storm["failed_connects"] == 0
    assert _normalized(on) == _normalized(off)
    # off: a connect and a first send per connection; on: both fold, per process
    assert _records(off) > 3 * STORM
    assert _records(on) < _records(off) / 50
