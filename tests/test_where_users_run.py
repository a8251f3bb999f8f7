"""Where users run svctrace: a container's PID namespace, svctrace in a venv of its own,
a suite on another Python, no tracefs, and commands that run no (traceable) pytest."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from svctrace.kernel.pidns import INITIAL_INODE
from svctrace.join.collect import NO_MARKERS
from tests.support import e2e, venvs
from tests.support.backends import backend_marks, needs_backend

UNSHARE = shutil.which("unshare")
needs_unshare = pytest.mark.skipif(UNSHARE is None, reason="util-linux unshare is missing")
CONTAINER = ["unshare", "--pid", "--fork", "--mount-proc"]  # what a container's job gets


def _pytest_cmd(python: str = sys.executable) -> list[str]:
    return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"]


def _run(prefix: list[str], svctrace: list[str], backend: str, suite, env, python=sys.executable,
         report_name="report.json"):
    report = suite / report_name
    cmd = [*prefix, *svctrace, "run", "--backend", backend, "--report", str(report),
           "--progress", "0", "--", *_pytest_cmd(python)]
    proc = subprocess.run(cmd, cwd=suite, env=e2e.child_env(env), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert report.exists(), f"no report; exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads(report.read_text()), proc


def _assert_same_as_host(report: dict, proc, backend: str) -> None:
    """What test_e2e_backends asserts of a run on the host, per test and phase."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert report["run"]["backend"] == backend
    assert report["run"]["lost_events"] == 0
    assert e2e.observed(report) == e2e.expected(backend)
    assert e2e.inherited(report) == e2e.expected_inherited(backend)


@needs_unshare
@pytest.mark.parametrize("backend", [pytest.param(b, marks=backend_marks(b))
                                     for b in ("ebpf", "strace", "inprocess")])
def test_container_pid_namespace_gives_the_host_answer(sample_suite, sample_env, backend):
    report, proc = _run(CONTAINER, e2e.SVCTRACE, backend, sample_suite, sample_env)
    _assert_same_as_host(report, proc, backend)
    assert "nested" in report["run"]["pid_namespace"]
    # pids in the evidence are the container's own: the command is pid 2 or so, not a host pid
    first = report["tests"]["test_sample.py::test_redis_pool_open"]["evidence"]["redis"]["first"]
    assert first["pid"] < 100 and "pytest" in first["cmdline"]


@needs_unshare
@needs_backend("ebpf")
@pytest.mark.parametrize("extra", [["--mount", "--uts", "--ipc"], []], ids=["more-ns", "pid-only"])
def test_ebpf_in_other_namespace_combinations(sample_suite, sample_env, extra):
    prefix = CONTAINER + extra if extra else ["unshare", "--pid", "--fork"]  # host's /proc
    report, proc = _run(prefix, e2e.SVCTRACE, "ebpf", sample_suite, sample_env)
    _assert_same_as_host(report, proc, "ebpf")
    # pids are the namespace's; with the host's /proc, /proc/<pid> is another process:
    # evidence names the program from the kernel's exec record, never that other process
    first = report["tests"]["test_sample.py::test_redis_pool_open"]["evidence"]["redis"]["first"]
    assert first["cmdline"].split()[0] == sys.executable, first["cmdline"]


@needs_backend("ebpf")
def test_svctrace_in_its_own_venv_traces_a_suite_on_another_python(sample_suite, sample_env):
    """pipx-style: svctrace alone in one venv (no bcc link, no test extras); the suite's
    pytest and client libraries in another venv on another Python minor version, with no
    svctrace installed. auto must pick ebpf and the report must equal the normal one."""
    python = venvs.other_python()
    if python is None:
        pytest.skip("no Python of another minor version (pyenv 3.12/3.13/3.10) here")
    alone, suite = venvs.svctrace_venv(), venvs.suite_venv(python)
    check = subprocess.run([str(alone / "bin" / "python"), "-c", "import bcc"],
                           capture_output=True)
    assert check.returncode != 0, "the svctrace venv must not see bcc by itself"
    for pkg in ("svctrace", "pytest_svctrace"):
        missing = subprocess.run([str(suite / "bin" / "python"), "-c", f"import {pkg}"],
                                 capture_output=True)
        assert missing.returncode != 0, f"the suite venv must not have {pkg}"
    report, proc = _run([], [str(alone / "bin" / "svctrace")], "auto", sample_suite,
                        sample_env, python=str(suite / "bin" / "python"))
    _assert_same_as_host(report, proc, "ebpf")
    assert "backend auto: using ebpf" in proc.stderr
    assert "svctrace: WARNING" not in proc.stderr


TIER_SUITE = ("import socket\n"
              "def test_pure():\n    pass\n"
              "def test_pure_too():\n    pass\n"
              "def test_misplaced():\n"
              "    socket.socket().connect_ex(('127.0.0.1', 6379))\n"
              "def test_redis():\n    socket.socket().connect_ex(('127.0.0.1', 6379))\n")


def _tier_plan(suite) -> None:
    """A plan made when test_misplaced needed nothing: it sits in tier `none`."""
    from svctrace.config import Tier
    from svctrace.plan.tiers import plan_tiers
    needs = {"test_pure": [], "test_pure_too": [], "test_misplaced": [], "test_redis": ["redis"]}
    report = {"tests": {f"test_tier.py::{n}": {"ran": True, "needs": v, "duration_s": 0.1}
                        for n, v in needs.items()}}
    plan = plan_tiers(report, [Tier("none", (), 1), Tier("redis", ("redis",), 5)])
    (suite / "plan.json").write_text(json.dumps(plan))


def _ran(report: dict) -> set[str]:
    return {n.split("::")[1] for n, t in report["tests"].items() if t["ran"]}


@pytest.fixture(scope="module")
def two_venvs():
    """svctrace alone in its venv; the project's pytest in another, without svctrace."""
    alone, project = venvs.svctrace_venv(), venvs.suite_venv(sys.executable)
    missing = subprocess.run([str(project / "bin" / "python"), "-c", "import pytest_svctrace"],
                             capture_output=True)
    assert missing.returncode != 0, "the project's venv must not have svctrace"
    return alone / "bin" / "svctrace", project / "bin" / "python"


def test_a_tier_job_from_svctraces_own_venv_selects_its_tests(tmp_path, two_venvs):
    """The documented tier job with svctrace only in its own venv: `svctrace run --plan
    --tier [--shard]` keeps the tier's tests, as `pytest --svctrace-plan` would."""
    svctrace, python = two_venvs
    (tmp_path / "test_tier.py").write_text(TIER_SUITE)
    _tier_plan(tmp_path)
    # What the docs used to give: the project's pytest does not know the options.
    bare = subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider",
                           "--svctrace-plan", "plan.json", "--svctrace-tier", "none"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 4 and "unrecognized arguments" in bare.stderr
    pytest_cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    runs, said = {}, {}
    for name, extra in (("none", ["--tier", "none"]),
                        ("s1", ["--tier", "none", "--shard", "1/2"]),
                        ("s2", ["--tier", "none", "--shard", "2/2"])):
        proc = subprocess.run([str(svctrace), "run", "-b", "inprocess", "--progress", "0",
                               "-o", f"{name}.json", "--plan", "plan.json", *extra, "--",
                               *pytest_cmd], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "WARNING" not in proc.stderr, proc.stderr
        runs[name], said[name] = _ran(json.loads((tmp_path / f"{name}.json").read_text())), \
            proc.stdout
    assert "svctrace: tier 'none' (no services): kept 3 tests, deselected 1" in said["none"]
    assert runs["none"] == {"test_pure", "test_pure_too", "test_misplaced"}
    assert runs["s1"] | runs["s2"] == runs["none"] and not runs["s1"] & runs["s2"]
    assert runs["s1"] and runs["s2"]


def test_a_pytest_that_does_not_select_the_tier_is_named(tmp_path, two_venvs):
    """A plugin that ignores the selection (an older one installed in the project's venv;
    here the selection hook blocked) runs every test: the tier job must not pass quietly."""
    svctrace, python = two_venvs
    (tmp_path / "test_tier.py").write_text(TIER_SUITE)
    _tier_plan(tmp_path)
    proc = subprocess.run([str(svctrace), "run", "-b", "inprocess", "--progress", "0", "-o",
                           "r.json", "--plan", "plan.json", "--tier", "none", "--",
                           str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:svctrace-select"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("svctrace: WARNING: 1 test outside tier 'none' ran (e.g. test_tier.py::"
            "test_redis): the command's pytest did not select the tier") in proc.stderr


def test_a_tier_given_to_run_in_a_nested_pytest_is_not_applied(tmp_path, two_venvs):
    """The tier is the run's: a pytest that a test starts (its own node ids) keeps its
    tests, and an inner `svctrace run` does not inherit the outer run's tier."""
    svctrace, python = two_venvs
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_inner.py").write_text("def test_inner_one():\n    pass\n"
                                         "def test_inner_two():\n    pass\n")
    (tmp_path / "test_tier.py").write_text(
        TIER_SUITE + "def test_runs_pytest():\n    import subprocess\n"
        f"    out = subprocess.run([{str(python)!r}, '-m', 'pytest', '-q', '-p', "
        f"'no:cacheprovider', {str(inner)!r}], capture_output=True, text=True).stdout\n"
        "    assert '2 passed' in out, out\n")
    _tier_plan(tmp_path)  # test_runs_pytest is not in the plan: the most complete tier
    proc = subprocess.run([str(svctrace), "run", "-b", "inprocess", "--progress", "0", "-o",
                           "r.json", "--plan", "plan.json", "--tier", "redis", "--",
                           str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_tier.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _ran(json.loads((tmp_path / "r.json").read_text())) == {"test_redis",
                                                                   "test_runs_pytest"}


@needs_backend("ebpf")
def test_a_guarded_tier_job_from_svctraces_own_venv(tmp_path, two_venvs):
    """`svctrace run --guard --plan --tier`: selected and guarded, no plugin installed."""
    svctrace, python = two_venvs
    (tmp_path / "test_tier.py").write_text(TIER_SUITE)
    _tier_plan(tmp_path)
    proc = subprocess.run([str(svctrace), "run", "-b", "ebpf", "--progress", "0", "-o",
                           "r.json", "--guard", "--plan", "plan.json", "--tier", "none", "--",
                           str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert _ran(report) == {"test_pure", "test_pure_too", "test_misplaced"}
    assert report["run"]["guard"]["tier"] == "none"
    assert report["tests"]["test_tier.py::test_misplaced"]["denied"] == ["redis"]
    assert ("svctrace: guard: test_tier.py::test_misplaced tried redis, which tier 'none' "
            "does not start: it belongs in tier 'redis'") in proc.stderr.splitlines()


def test_installed_plugin_is_registered_once(tmp_path):
    """svctrace's own venv has the plugin installed: the boot plugin must not add it again
    (each phase edge would be written twice)."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    proc = subprocess.run(e2e.SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--",
                                          *_pytest_cmd(), "--trace-config", "test_one.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    registered = [line for line in proc.stdout.splitlines()
                  if line.startswith("PLUGIN registered: <module 'pytest_svctrace.plugin'")]
    assert len(registered) == 1, proc.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tests"]["test_one.py::test_one"]["outcome"] == "passed"
    assert NO_MARKERS not in report["run"]["notes"]


def test_command_without_pytest_says_so_and_keeps_its_status(tmp_path):
    proc = subprocess.run(e2e.SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--",
                                          "sh", "-c", "exit 3"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert NO_MARKERS in proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert NO_MARKERS in report["run"]["notes"]
    summary = subprocess.run(e2e.SVCTRACE + ["summary", str(tmp_path / "r.json")],
                             capture_output=True, text=True, timeout=60)
    assert NO_MARKERS in summary.stdout


def test_blocked_plugin_is_not_forced_and_the_run_says_why(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    proc = subprocess.run(e2e.SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--",
                                          *_pytest_cmd(), "-p", "no:svctrace", "test_one.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert NO_MARKERS in json.loads((tmp_path / "r.json").read_text())["run"]["notes"]


def test_interpreter_that_cannot_load_the_plugin_warns_and_runs(tmp_path):
    """A tested environment on Python 3.9 (svctrace needs 3.10): one warning, the tests
    still run, the exit status passes through, and the run notes why nothing was traced."""
    old = venvs.other_python(prefer=("3.9",))
    if old is None:
        pytest.skip("no Python 3.9 interpreter (pyenv) to play an unsupported environment")
    venv = venvs.ensure_venv("pytest-py3.9", old, ("pytest",))
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert False\n")
    proc = subprocess.run(e2e.SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--",
                                          *_pytest_cmd(str(venv / "bin" / "python")),
                                          "test_one.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # the failing test's status
    assert "1 failed" in proc.stdout
    warnings = [line for line in proc.stderr.splitlines()
                if "cannot load the svctrace plugin" in line]
    assert len(warnings) == 1 and "Python 3.9" in warnings[0]
    assert NO_MARKERS in json.loads((tmp_path / "r.json").read_text())["run"]["notes"]


OLDEST_PYTEST_SUITE = '''
import os, socket, pytest

def _touch():
    socket.create_connection(("127.0.0.1", int(os.environ["SERVICE_PORT"]))).close()

@pytest.fixture
def opened():
    _touch()
    yield
    _touch()

def test_in_fixture(opened):
    pass

def test_in_body():
    _touch()

@pytest.mark.xfail(strict=False)
def test_xfails():
    _touch()
    assert False

def test_fails():
    assert False
'''


def test_the_oldest_supported_pytest_and_pluggy(tmp_path):
    """pytest 7.0.1 with pluggy 1.0.0 (pyproject allows pytest>=7.0): the plugin's hook
    wrappers in pluggy's old style, phases, outcomes and fixture evidence as with today's."""
    python = venvs.other_python(prefer=("3.10",))
    if python is None or "3.10" not in python:
        pytest.skip("no Python 3.10 interpreter (pyenv) for pytest 7.0.1")
    venv = venvs.ensure_venv("pytest-7.0", python, ("pytest==7.0.1", "pluggy==1.0.0"))
    report, proc = e2e.run_one_file(tmp_path, "test_old.py", OLDEST_PYTEST_SUITE, "web",
                                    ["-b", "inprocess"], expect_status=1,
                                    python=str(venv / "bin" / "python"))
    assert "1 failed, 2 passed, 1 xfailed" in proc.stdout
    tests = {nodeid.split("::")[1]: test for nodeid, test in report["tests"].items()}
    assert {name: (t["outcome"], t["phases"]) for name, t in tests.items()} == {
        "test_in_fixture": ("passed", {"setup": ["web"], "call": [], "teardown": ["web"]}),
        "test_in_body": ("passed", {"setup": [], "call": ["web"], "teardown": []}),
        "test_xfails": ("xfailed", {"setup": [], "call": ["web"], "teardown": []}),
        "test_fails": ("failed", {"setup": [], "call": [], "teardown": []})}
    assert tests["test_in_fixture"]["evidence"]["web"]["fixtures"] == ["test_old.py::opened"]


@needs_unshare
def test_doctor_tells_a_container_from_the_host(tmp_path):
    host = subprocess.run(e2e.SVCTRACE + ["doctor"], capture_output=True, text=True,
                          timeout=120)
    inside = subprocess.run(CONTAINER + e2e.SVCTRACE + ["doctor"], capture_output=True,
                            text=True, timeout=120)
    line = lambda out: next(l for l in out.splitlines() if "pid namespace" in l)  # noqa: E731
    assert f"pid:[{INITIAL_INODE}] initial (host)" in line(host.stdout)
    assert "nested" in line(inside.stdout) and "ok" in line(inside.stdout)
    assert inside.returncode == host.returncode


@needs_unshare
@needs_backend("ebpf")
def test_missing_tracefs_is_mounted_and_noted(tmp_path):
    """A fresh mount namespace without tracefs (a new container, `ip netns exec`)."""
    (tmp_path / "test_one.py").write_text(
        "import socket\n\ndef test_redis():\n"
        "    socket.socket().connect_ex(('127.0.0.1', 6379))\n")
    script = ("umount -l /sys/kernel/debug 2>/dev/null; umount -l /sys/kernel/tracing; "
              "test ! -e /sys/kernel/tracing/events || exit 99; "
              f"exec {' '.join(e2e.SVCTRACE)} run -b ebpf -o r.json -- "
              f"{' '.join(_pytest_cmd())} test_one.py")
    proc = subprocess.run(["unshare", "--mount", "sh", "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert any(n.startswith("mounted tracefs") for n in report["run"]["notes"])
    assert report["tests"]["test_one.py::test_redis"]["services"] == ["redis"]


@needs_unshare
@needs_backend("ebpf")
def test_doctor_in_a_fresh_container_answers_what_run_does(tmp_path):
    """A fresh privileged container: its own PID namespace, and a mount namespace where
    tracefs is not mounted. run mounts it and traces with eBPF; doctor, asked first, must
    say so (and exit 0), and the guard, whose program uses the connect tracepoints, too."""
    (tmp_path / "test_one.py").write_text(
        "import socket\n\ndef test_redis():\n"
        "    socket.socket().connect_ex(('127.0.0.1', 6379))\n")
    svctrace = " ".join(e2e.SVCTRACE)
    script = ("umount -l /sys/kernel/debug 2>/dev/null; umount -l /sys/kernel/tracing; "
              "test ! -e /sys/kernel/tracing/events || exit 99; "
              f"{svctrace} doctor; echo doctor-exit=$?; "
              f"exec {svctrace} run --deny kafka -o r.json -- {' '.join(_pytest_cmd())} "
              "test_one.py")
    proc = subprocess.run([*CONTAINER, "--mount", "sh", "-c", script], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert "doctor-exit=0" in out, out + proc.stderr
    assert "ebpf       usable" in out and "auto       would use ebpf" in out, out
    assert "  ebpf: did  mounted tracefs at /sys/kernel/tracing" in out
    assert "guard      usable (--deny, --allow, --guard)" in out, out
    assert proc.returncode == 0, out + proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["backend"] == "ebpf"  # what doctor said auto would use
    assert report["tests"]["test_one.py::test_redis"]["services"] == ["redis"]


def test_svctrace_run_inside_a_traced_test_has_its_own_report(tmp_path):
    """svctrace's own kind of suite: a traced test that runs `svctrace run` on a suite.
    The inner run has its own pipe, so the outer owner in the environment is not its."""
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "test_inner.py").write_text("def test_inner():\n    pass\n")
    cmd = e2e.SVCTRACE + ["run", "-b", "inprocess", "-o", str(inner / "r.json"), "--",
                          *_pytest_cmd(), str(inner / "test_inner.py")]
    (tmp_path / "test_outer.py").write_text(
        "import subprocess\n\n"
        f"def test_outer():\n    subprocess.run({cmd!r}, check=True)\n")
    proc = subprocess.run(e2e.SVCTRACE + ["run", "-b", "inprocess", "-o", "outer.json", "--",
                                          *_pytest_cmd(), "test_outer.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    inner_report = json.loads((inner / "r.json").read_text())
    assert [k.split("::")[-1] for k in inner_report["tests"]] == ["test_inner"]
    assert inner_report["tests"][next(iter(inner_report["tests"]))]["outcome"] == "passed"
    outer_report = json.loads((tmp_path / "outer.json").read_text())
    assert [k.split("::")[-1] for k in outer_report["tests"]] == ["test_outer"]


def test_command_lines_are_not_read_from_another_namespaces_proc():
    """With the host's /proc in a child PID namespace, /proc/<pid> is another process."""
    from svctrace.config import Config
    from svctrace.run.runner import Run
    run = Run(["true"], "inprocess", "r.json", Config(), log=lambda msg: None)
    run.pump.proc_is_ours = False
    run.pump.learn_cmdline(os.getpid())
    assert os.getpid() not in run.collector.attributor.cmdlines
    run.pump.proc_is_ours = True
    run.pump.learn_cmdline(os.getpid())
    assert "pytest" in run.collector.attributor.cmdlines[os.getpid()]



@needs_backend("ebpf")
def test_a_guard_cgroup_of_another_pid_namespace_is_not_swept(tmp_path):
    """Containers and the host share the cgroup tree, not pids: a host run must not take a
    container run's guard cgroup for a dead runner's (its pid means another process here),
    while a dead runner of its own namespace is still swept."""
    from svctrace.guard.kernel import _own_cgroup, cgroup2_mount
    from svctrace.kernel import pidns
    mount = cgroup2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    parent = _own_cgroup(mount)
    ours = pidns.current().inode
    other = parent / f"svctrace-guard-2-1-ns{ours + 1}"  # pid 2 of a container
    dead = parent / f"svctrace-guard-999999-1-ns{ours}"  # no such runner here
    other.mkdir()
    dead.mkdir()
    try:
        (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
        proc = subprocess.run(e2e.SVCTRACE + ["run", "-b", "ebpf", "-q", "--progress", "0",
                                              "-o", "r.json", "--deny", "kafka", "--",
                                              *_pytest_cmd(), "test_ok.py"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert other.exists() and not dead.exists()
    finally:
        for folder in (other, dead):
            if folder.exists():
                folder.rmdir()
