"""The guard end to end: `svctrace run --deny/--allow/--guard` refuses services in the
kernel for the command's tree only, reports who tried them, and removes its cgroup."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import e2e
from tests.support.backends import needs_backend as needs

KAFKA_TESTS = {"test_sample.py::test_kafka_refused", "test_sample.py::test_kafka_mock_broker"}


def _guarded(suite: Path, env: dict, options: list[str], pytest_args: tuple = (),
             report: str = "g.json", timeout: float = 300):
    cmd = e2e.SVCTRACE + ["run", "--backend", "ebpf", "--report", report, "--progress", "0",
                          *options, "--", sys.executable, "-m", "pytest", "-q",
                          "-p", "no:cacheprovider", *pytest_args]
    proc = subprocess.run(cmd, cwd=suite, env=e2e.child_env(env), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    path = suite / report
    assert path.exists(), f"no report; exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(path.read_text()), proc


def _all_services(nodeid: str) -> set[str]:
    phases = e2e.expected("ebpf")[nodeid]
    return set().union(*map(set, phases.values())) | set(
        e2e.expected_inherited("ebpf").get(nodeid, {}))


def _cgroup_gone(report: dict) -> None:
    cgroup = report["run"]["guard"]["cgroup"]
    assert cgroup and not os.path.exists(cgroup), cgroup


@needs("ebpf")
def test_deny_kafka_refuses_exactly_the_kafka_tests_at_once(sample_suite, sample_env):
    report, proc = _guarded(sample_suite, sample_env, ["--deny", "kafka"])
    tests = report["tests"]
    assert report["run"]["denied_services"] == ["kafka"]
    assert report["run"]["guard"]["refusal"].startswith("ECONNREFUSED")
    denied = {n for n, t in tests.items() if t["denied"]}
    assert denied == KAFKA_TESTS
    for nodeid in KAFKA_TESTS:
        test = tests[nodeid]
        assert test["denied"] == ["kafka"] and "kafka" in test["needs"]
        refused = test["denied_evidence"]["kafka"]
        # librdkafka's broker thread (a C thread) was refused in the kernel, at once: the
        # connect itself failed with ECONNREFUSED, 'in progress' never happened
        assert any(t.startswith("rdk:") for t in refused["threads"]), refused
        assert refused["first"]["result"] == "ECONNREFUSED"
        assert refused["first"]["offset_ms"] < 2000
        seen = test["evidence"]["kafka"]
        errors = {r for d in seen["by_destination"].values() for r in d["errors"]} \
            if "by_destination" in seen else {seen["first"]["result"]}
        assert "in progress" not in errors
    # The mock-broker test fails within its own flush(10), not after librdkafka's default
    # message.timeout.ms (300 s); the other tests are untouched.
    broker = tests["test_sample.py::test_kafka_mock_broker"]
    assert broker["outcome"] == "failed" and broker["duration_s"] < 30
    expected = e2e.expected("ebpf")
    for nodeid, test in tests.items():
        if nodeid in KAFKA_TESTS:
            continue
        assert test["outcome"] == "passed", nodeid
        assert test["phases"] == expected[nodeid], nodeid
        assert not test["denied"] and not test["denied_evidence"], nodeid
    assert "test_sample.py::test_kafka_mock_broker tried kafka" in proc.stderr
    assert "guard: denied kafka; 2 tests tried a denied service" in proc.stderr
    _cgroup_gone(report)


@needs("ebpf")
def test_allow_postgres_under_xdist_refuses_every_other_named_service(sample_suite,
                                                                      sample_env):
    report, proc = _guarded(sample_suite, sample_env, ["--allow", "postgres"],
                            ("-n", "2"), report="allow.json")
    assert "postgres" not in report["run"]["denied_services"]
    assert {"kafka", "redis", "http-api", "refused-svc"} <= set(
        report["run"]["denied_services"])
    for nodeid, test in report["tests"].items():
        wanted = _all_services(nodeid) - {"postgres"}
        assert set(test["denied"]) == wanted, nodeid
        assert wanted <= set(test["needs"]), nodeid
        if not wanted:
            assert test["outcome"] == "passed", nodeid
    tests = report["tests"]
    assert {t["worker"] for t in tests.values()} == {"gw0", "gw1"}
    # a forked and a spawned child process were refused too, in the child itself
    for name in ("test_multiprocessing_fork", "test_multiprocessing_spawn"):
        refused = tests[f"test_sample.py::{name}"]["denied_evidence"]["redis"]
        assert {p["role"] for p in refused["processes"].values()} == {"subprocess"}, name
    teardown = tests["test_sample.py::test_teardown_only"]["denied_evidence"]["redis"]
    assert teardown["phases"] == ["teardown"]
    _cgroup_gone(report)


def _wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _guard_cgroups(runner: int) -> set[str]:
    """The guard cgroups of this runner pid only: concurrent runs have their own."""
    from svctrace.guard.kernel import _own_cgroup, cgroup2_mount
    mount = cgroup2_mount()
    if mount is None:
        return set()
    parent = _own_cgroup(mount)
    return {str(p) for p in parent.glob(f"svctrace-guard-{runner}-*")}


SLEEPY = """
import socket, time
def test_sleeps():
    socket.socket().connect_ex(("127.0.0.1", 9092))
    open("reached", "w").close()
    time.sleep(60)
"""


def _start_sleepy(tmp_path: Path, report: str) -> subprocess.Popen:
    (tmp_path / "test_sleepy.py").write_text(SLEEPY)
    cmd = e2e.SVCTRACE + ["run", "-b", "ebpf", "-q", "--progress", "0", "--report", report,
                          "--deny", "kafka", "--", sys.executable, "-m", "pytest", "-q",
                          "-p", "no:cacheprovider", "test_sleepy.py"]
    return subprocess.Popen(cmd, cwd=tmp_path, env=e2e.child_env({}), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _new_cgroup(proc: subprocess.Popen) -> Path:
    found: list[str] = []
    _wait_for(lambda: bool(found.extend(_guard_cgroups(proc.pid)) or found))
    return Path(found[0])


def _pytest_in(cgroup: Path) -> int:
    pids: list[int] = []

    def ready() -> bool:
        pids[:] = [int(p) for p in (cgroup / "cgroup.procs").read_text().split()]
        return any(b"pytest" in Path(f"/proc/{p}/cmdline").read_bytes() for p in pids
                   if Path(f"/proc/{p}").exists())
    _wait_for(ready)
    return next(p for p in pids if b"pytest" in Path(f"/proc/{p}/cmdline").read_bytes())


@needs("ebpf")
@pytest.mark.parametrize("how", ["ctrl-c", "killed-pytest"])
def test_cgroup_is_removed_after_ctrl_c_and_a_killed_pytest(tmp_path, how):
    proc = _start_sleepy(tmp_path, "r.json")
    cgroup = _new_cgroup(proc)
    pytest_pid = _pytest_in(cgroup)
    # The test has tried kafka and sleeps: the report must say so, whatever then kills it.
    _wait_for(lambda: (tmp_path / "reached").exists())
    if how == "ctrl-c":
        proc.send_signal(signal.SIGINT)  # forwarded to the command's process group
    else:
        os.kill(pytest_pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not cgroup.exists()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tests"]["test_sleepy.py::test_sleeps"]["denied"] == ["kafka"]


@needs("ebpf")
def test_cgroup_of_a_killed_runner_is_swept_by_the_next_run(tmp_path):
    proc = _start_sleepy(tmp_path, "r.json")
    cgroup = _new_cgroup(proc)
    pytest_pid = _pytest_in(cgroup)
    proc.kill()  # SIGKILL: svctrace runs no cleanup
    proc.wait(timeout=30)
    assert cgroup.exists()
    os.killpg(pytest_pid, signal.SIGKILL)  # the orphaned command (it holds our pipes)
    proc.communicate(timeout=30)
    _wait_for(lambda: not (cgroup / "cgroup.procs").read_text().strip())
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    run = subprocess.run(e2e.SVCTRACE + ["run", "-b", "ebpf", "-q", "--progress", "0",
                                         "--report", "next.json", "--deny", "kafka", "--",
                                         sys.executable, "-m", "pytest", "-q",
                                         "-p", "no:cacheprovider", "test_ok.py"],
                         cwd=tmp_path, env=e2e.child_env({}), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    assert not cgroup.exists()
    notes = json.loads((tmp_path / "next.json").read_text())["run"]["notes"]
    assert any(f"removed the guard cgroup {cgroup}" in n for n in notes), notes


def test_the_kernel_guard_has_every_member_of_the_enforcer_protocol():
    """The runner and doctor use a guard only through guard.base.Enforcer: a member the
    kernel guard lacks, or has as a method where the protocol wants a classmethod (doctor
    calls it without a run), would fail only on a host where the guard runs."""
    import inspect
    from svctrace.guard.base import Enforcer
    from svctrace.guard.kernel import Guard
    for name, member in vars(Enforcer).items():
        if name.startswith("_") or not callable(getattr(Enforcer, name)):
            continue
        assert hasattr(Guard, name), name
        wants_class = isinstance(member, classmethod)
        assert isinstance(inspect.getattr_static(Guard, name), classmethod) == wants_class, name
    assert {"spec", "notes"} <= set(Enforcer.__annotations__)

