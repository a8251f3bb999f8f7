"""`svctrace prove` end to end (root, ebpf, real Redis and Postgres): tests that only use
Redis are proven not to need it, tests that need a service are proven to, a test that fails
anyway stays unproven; serial and under xdist; the shadow guard; bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import e2e
from tests.support.backends import needs_backend as needs

SUITE = Path(__file__).resolve().parent / "suites" / "proof"
F = "test_proof_sample.py::"
EXPECTED = {
    F + "test_read_through_cache": {"redis": "not_needed", "postgres": "needed"},
    F + "test_warm_up_only": {"redis": "not_needed"},
    F + "test_best_effort_metrics": {"redis": "not_needed"},
    F + "test_needs_redis": {"redis": "needed"},
    F + "test_needs_postgres": {"postgres": "needed"},
    F + "test_fails_in_any_case": {"redis": "unproven"},
}
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


@pytest.fixture
def suite(tmp_path, services):
    target = tmp_path / "suite"
    shutil.copytree(SUITE, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "pyproject.toml").write_text(
        "[tool.svctrace]\n[tool.svctrace.services]\n"
        f'postgres = ["{services["pg_port"]}"]\nredis = ["{services["redis_port"]}"]\n')
    return target


def _env(services) -> dict:
    return e2e.child_env({"SVCTRACE_PG_DSN": services["pg_dsn"],
                          "SVCTRACE_REDIS_URL": services["redis_url"]})


def _svctrace(suite: Path, services, *args, timeout: float = 600):
    return subprocess.run([*e2e.SVCTRACE, *args], cwd=suite, env=_env(services),
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _trace(suite, services, pytest_args=(), extra=(), name="r.json"):
    proc = _svctrace(suite, services, "run", "--backend", "ebpf", "-o", name, "--progress",
                     "0", *extra, "--", *PYTEST, *pytest_args)
    assert (suite / name).exists(), proc.stdout + proc.stderr
    return json.loads((suite / name).read_text()), proc


@needs("ebpf")
@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["serial", "xdist"])
def test_prove_tells_needed_from_used(suite, services, xdist):
    report, proc = _trace(suite, services, xdist)
    assert proc.returncode == 1  # test_fails_in_any_case
    proc = _svctrace(suite, services, "prove", "r.json", "-o", "p.json", "--", *PYTEST, *xdist)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proven = json.loads((suite / "p.json").read_text())
    tests = proven["tests"]
    got = {n: t["needs_proof"] for n, t in tests.items() if "needs_proof" in t}
    assert got == EXPECTED, proc.stderr
    assert "needs_proof" not in tests[F + "test_no_services"]
    # The evidence a reviewer sees: the outcome with the service refused, the first refusal.
    need = tests[F + "test_needs_redis"]["proof"]["redis"]
    assert need["control"] == "passed" and need["denied_run"] == "failed"
    assert need["refused"]["result"] == "ECONNREFUSED" and need["refused"]["phase"] == "call"
    warm = tests[F + "test_warm_up_only"]["proof"]["redis"]
    assert warm["denied_run"] == "passed" and warm["refused"]["phase"] == "setup"
    assert warm["why"] == "passed with redis refused"
    broken = tests[F + "test_fails_in_any_case"]["proof"]["redis"]
    assert broken["why"] == "failed in the control run too, with nothing refused"
    # One pytest process per service and kind of run, not one per test.
    info = proven["run"]["proof"]
    assert [(r["service"], r["denied"], r["tests"]) for r in info["reruns"]] == [
        ("postgres", False, 2), ("postgres", True, 2), ("redis", False, 5), ("redis", True, 5)]
    assert info["plain_duration_s"] == report["run"]["duration_s"] and info["duration_s"] > 0
    # Progress and time against the plain run.
    assert "prove: redis refused: 5 tests in" in proc.stderr
    assert "14 of 14 test re-runs done" in proc.stderr
    assert "x the plain run" in proc.stderr
    assert "redis: 1 needed, 3 not needed, 1 unproven" in proc.stderr
    # Tiers move the proven tests; summary and explain show the verdicts.
    with open(suite / "pyproject.toml", "a") as fh:
        fh.write('[[tool.svctrace.tiers]]\nname = "db"\nservices = ["postgres"]\n'
                 'startup_s = 5\n[[tool.svctrace.tiers]]\nname = "full"\n'
                 'services = ["postgres", "redis"]\nstartup_s = 30\n')
    tiers = _svctrace(suite, services, "tiers", "p.json", "--plan-out", "plan.json")
    assert tiers.returncode == 0, tiers.stderr
    assert "3 tests moved to a cheaper tier because of proof" in tiers.stderr
    plan = json.loads((suite / "plan.json").read_text())
    assert plan["assignments"][F + "test_read_through_cache"] == "db"
    assert plan["assignments"][F + "test_needs_redis"] == "full"
    summary = _svctrace(suite, services, "summary", "p.json")
    assert "3 moved to a cheaper tier because of proof" in summary.stdout
    explain = _svctrace(suite, services, "explain", "p.json", F + "test_best_effort_metrics")
    assert "redis: used, not needed (passed with redis refused)" in explain.stdout


@needs("ebpf")
def test_shadow_guard_records_what_the_guard_refuses_and_refuses_nothing(suite, services):
    enforced, _ = _trace(suite, services, extra=("--deny", "redis"), name="enforced.json")
    shadow, proc = _trace(suite, services, extra=("--deny", "redis", "--shadow"),
                          name="shadow.json")
    assert shadow["run"]["guard"]["shadow"] is True
    assert enforced["run"]["guard"]["shadow"] is False
    assert shadow["run"]["denied_services"] == enforced["run"]["denied_services"] == ["redis"]
    would = {n: t["denied"] for n, t in shadow["tests"].items() if t["denied"]}
    refused = {n: t["denied"] for n, t in enforced["tests"].items() if t["denied"]}
    assert would == refused and len(would) == 5
    for nodeid in would:
        ev = shadow["tests"][nodeid]["denied_evidence"]["redis"]
        assert ev["shadow"] is True and ev["first"]["result"] == "ok"
        assert ev["first"]["phase"] == \
            enforced["tests"][nodeid]["denied_evidence"]["redis"]["first"]["phase"]
        # allowed: the contact really happened, and the backend saw it
        assert "redis" in shadow["tests"][nodeid]["needs"]
    outcomes = {n: t["outcome"] for n, t in shadow["tests"].items()}
    assert outcomes == {**{n: "passed" for n in outcomes}, F + "test_fails_in_any_case": "failed"}
    assert enforced["tests"][F + "test_needs_redis"]["outcome"] == "failed"
    # Counts may differ (the cache writes back only when its read worked): not the services.
    assert set(shadow["run"]["guard"]["refusals"]) == set(
        enforced["run"]["guard"]["refusals"]) == {"redis"}
    assert "guard (shadow: nothing refused): would deny redis; 5 tests" in proc.stderr


@needs("ebpf")
def test_prove_refuses_a_report_of_other_tests_and_writes_nothing(suite, services):
    _trace(suite, services)
    (suite / "test_other.py").write_text("def test_other():\n    pass\n")
    (suite / "p.json").write_text("{}")  # a file the user had: it must stay
    proc = _svctrace(suite, services, "prove", "r.json", "-o", "p.json", "--", *PYTEST,
                     "test_other.py")
    assert proc.returncode == 1
    assert "COMMAND ran none of the 2 tests r.json says touched postgres" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (suite / "p.json").read_text() == "{}"
    report = json.loads((suite / "r.json").read_text())
    report["schema"] = "svctrace-report/0"
    (suite / "old.json").write_text(json.dumps(report))
    proc = _svctrace(suite, services, "prove", "old.json", "-o", "p.json", "--", *PYTEST)
    assert proc.returncode == 1 and "re-running" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "svctrace-report/0" in proc.stderr, proc.stderr
    proc = _svctrace(suite, services, "prove", "r.json", "-o", "r.json", "--", *PYTEST)
    assert proc.returncode == 2 and "never overwrites" in proc.stderr


@needs("ebpf")
def test_ctrl_c_writes_the_proofs_gathered_so_far(suite, services):
    _trace(suite, services)
    log = suite / "prove.log"
    with open(log, "w") as err:
        # Its own session, as a terminal's foreground job: Ctrl-C reaches the whole group.
        proc = subprocess.Popen([*e2e.SVCTRACE, "prove", "r.json", "-o", "p.json", "--",
                                 *PYTEST], cwd=suite, env=_env(services), stdout=err,
                                stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 120
        while "redis control: re-running" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(120) == 130, log.read_text()
    proven = json.loads((suite / "p.json").read_text())
    info = proven["run"]["proof"]
    assert info["interrupted"] is True
    tests = proven["tests"]
    # postgres was proven before Ctrl-C; redis's re-runs never finished: unproven, not guessed
    assert tests[F + "test_needs_postgres"]["needs_proof"] == {"postgres": "needed"}
    for nodeid, test in tests.items():
        verdict = (test.get("needs_proof") or {}).get("redis")
        assert verdict in (None, "unproven"), (nodeid, test["proof"])
    assert "interrupted: the proofs so far were kept" in log.read_text()

