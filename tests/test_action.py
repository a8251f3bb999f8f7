"""The GitHub Action (action.yml, scripts/action.sh) run as a runner runs it: install from its
own checkout, trace a suite, merge, plan tiers, guard a tier; summary and exit status."""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

from tests.support.action import copy_action, run_action
from tests.support.backends import needs_backend

# The project's own pytest (this venv's), as a job's `command` names it.
PYTEST = f"{sys.executable} -m pytest -q -p no:cacheprovider"

TEST_PLAIN = "def test_plain():\n    assert 1 + 1 == 2\n"
TEST_BILLING = """import os, socket

def test_billing():
    socket.create_connection(("127.0.0.1", int(os.environ["BILLING_PORT"])), timeout=5).close()
"""
TEST_FAILS = "def test_fails():\n    assert False, 'on purpose'\n"
# A test that touched nothing when classified, then gained a hidden call (a stale plan).
TEST_HOOK_THEN = "def test_hook():\n    pass\n"
TEST_HOOK_NOW = TEST_BILLING.replace("test_billing", "test_hook")


@pytest.fixture(scope="module")
def billing_port():
    """A real TCP service (accepts and closes), outside the traced command's tree."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)

    def serve():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.close()
    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


@pytest.fixture(scope="module")
def job(tmp_path_factory, billing_port):
    """A job: the Action's checkout, RUNNER_TEMP (its venv is made once, reused by the
    tests as by a job's later steps) and a workspace with a small project."""
    root = tmp_path_factory.mktemp("job")
    action = copy_action(root / "action")
    temp = root / "runner_temp"
    temp.mkdir()
    ws = root / "workspace"
    (ws / "tests").mkdir(parents=True)
    (ws / "tests" / "test_plain.py").write_text(TEST_PLAIN)
    (ws / "tests" / "test_billing.py").write_text(TEST_BILLING)
    (ws / "pyproject.toml").write_text(f"""
[tool.svctrace.services]
billing = ["127.0.0.1:{billing_port}"]

[[tool.svctrace.tiers]]
name = "unit"
services = []
startup_s = 0

[[tool.svctrace.tiers]]
name = "full"
services = ["billing"]
startup_s = 30
""")
    return action, temp, ws, {"BILLING_PORT": str(billing_port)}


def _run(job, inputs, prefix=()):
    action, temp, ws, env = job   # env: the job's own (`env:`), which the command must see
    return run_action(action, ws, temp, inputs, prefix, env)


@needs_backend("ebpf")
def test_run_in_pid_namespace_passes_failure_through_and_summarizes(job):
    """In a PID namespace (a container job): the command's failure is the step's exit status,
    the report is still written and the job summary says what the tests touched."""
    _, _, ws, _ = job
    (ws / "tests" / "test_fails.py").write_text(TEST_FAILS)
    try:
        step = _run(job, {"command": f"{PYTEST} tests", "report": "reports/failing.json"},
                    prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    finally:
        (ws / "tests" / "test_fails.py").unlink()
    assert step.returncode == 1, step.log
    assert step.outputs["exit-code"] == "1"
    report = json.loads((ws / "reports" / "failing.json").read_text())
    assert report["run"]["exit_code"] == 1
    assert report["run"]["backend"] == "ebpf"
    assert "nested" in report["run"]["pid_namespace"], report["run"]["pid_namespace"]
    assert report["tests"]["tests/test_billing.py::test_billing"]["services"] == ["billing"]
    assert report["tests"]["tests/test_fails.py::test_fails"]["outcome"] == "failed"
    assert "Backend **ebpf**, 3 tests ran of 3 collected, **0 lost events**" in step.summary
    assert "| billing | 1 | 1 | 0 | 0 |" in step.summary
    assert "The command exited with status **1**" in step.summary
    assert "::error" not in step.log


@needs_backend("ebpf")
def test_shards_merge_tiers_and_a_guarded_tier(job):
    """The CI loop through the Action: two traced shards, merge (glob), tiers (plan, matrix
    output), then the cheap tier under the guard with a plan gone stale: the test that now
    calls billing is refused, named in the summary with its tier and the tier it belongs in."""
    _, _, ws, _ = job
    hook = ws / "tests" / "test_hook.py"
    hook.write_text(TEST_HOOK_THEN)
    try:
        shards = (("1", "tests/test_plain.py tests/test_hook.py"), ("2", "tests/test_billing.py"))
        for shard, paths in shards:
            step = _run(job, {"command": f"{PYTEST} {paths}",
                              "report": f"shards/report-{shard}.json"})
            assert step.returncode == 0, step.log
            assert step.outputs["exit-code"] == "0"
        assert "| billing | 1 |" in step.summary

        step = _run(job, {"mode": "merge", "reports": "shards/report-*.json",
                          "report": "merged.json"})
        assert step.returncode == 0, step.log
        merged = json.loads((ws / "merged.json").read_text())
        assert set(merged["tests"]) == {"tests/test_plain.py::test_plain",
                                        "tests/test_hook.py::test_hook",
                                        "tests/test_billing.py::test_billing"}
        assert "3 tests ran" in step.summary

        step = _run(job, {"mode": "tiers", "report": "merged.json", "plan": "plan.json",
                          "shards": "1"})
        assert step.returncode == 0, step.log
        plan = json.loads((ws / "plan.json").read_text())
        assert plan["assignments"] == {"tests/test_plain.py::test_plain": "unit",
                                       "tests/test_hook.py::test_hook": "unit",
                                       "tests/test_billing.py::test_billing": "full"}
        matrix = json.loads(step.outputs["matrix"])
        assert sorted((j["tier"], j["services"]) for j in matrix["include"]) == \
            [("full", "billing"), ("unit", "")]
        assert "unit" in step.summary and "full" in step.summary

        # Tier "unit" (its tests only), guarded, after test_hook gained its call.
        hook.write_text(TEST_HOOK_NOW)
        step = _run(job, {"command": f"{PYTEST} tests", "guard": "true", "plan": "plan.json",
                          "tier": "unit", "shard": "1/1", "report": "guarded.json"})
        assert step.returncode == 1, step.log
        guarded = json.loads((ws / "guarded.json").read_text())
        ran = {n for n, t in guarded["tests"].items() if t["ran"]}
        assert ran == {"tests/test_plain.py::test_plain", "tests/test_hook.py::test_hook"}
        assert guarded["tests"]["tests/test_hook.py::test_hook"]["denied"] == ["billing"]
        assert "**Guard** of tier `unit`: denied billing, " in step.summary
        assert "**1 tests tried a denied service**" in step.summary
        row = next(line for line in step.summary.splitlines()
                   if line.startswith("| `tests/test_hook.py::test_hook`"))
        assert "| billing | unit | full |" in row, row
    finally:
        hook.unlink()


def test_merge_names_a_missing_shard(job):
    """A shard report that is not there fails the merge, naming it (never fewer tests)."""
    step = _run(job, {"mode": "merge", "reports": "shards/report-1.json nowhere/report-9.json",
                      "report": "never.json"})
    assert step.returncode != 0
    assert "nowhere/report-9.json" in step.log
    assert not (job[2] / "never.json").exists()


@pytest.mark.parametrize("inputs, message", [
    ({"mode": "bogus"}, "mode 'bogus' is not one of run, merge, tiers."),
    ({"command": ""}, "mode run needs the 'command' input"),
    ({"command": "true", "args": "--report 'unclosed"}, "input args is not valid shell words"),
    ({"command": "true", "guard": "true"}, "guard: true needs the 'plan' and 'tier' inputs"),
])
def test_bad_inputs_are_one_error_line(job, inputs, message):
    step = _run(job, inputs)
    assert step.returncode == 2
    errors = [line for line in step.log.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and message in errors[0], step.log
    assert "Traceback" not in step.log
