"""End to end: `svctrace run --stacks` on the sample suite with real services."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.support import e2e
from tests.support.backends import needs_backend as needs
from svctrace.run.stacks import find_py_spy

pytestmark = pytest.mark.skipif(find_py_spy() is None,
                                reason="py-spy is not installed (pip install -e .[test])")


def _line(path, after: str, text: str) -> int:
    """The line number of the first line containing `text` after the one containing `after`."""
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if after in line)
    return next(i for i, line in enumerate(lines[start:], start) if text in line) + 1


def _stack(report: dict, test: str, service: str) -> dict:
    return report["tests"][f"test_sample.py::{test}"]["evidence"][service]["first"]["stack"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sample_env):
    """The sample suite traced with --stacks and without (same services, same machine)."""
    out = {}
    for mode in ("plain", "stacks"):
        suite = e2e.copy_suite(tmp_path_factory.mktemp(mode), sample_env)
        args = ("--stacks",) if mode == "stacks" else ()
        out[mode] = (suite, *_run(suite, sample_env, args))
    return out


def _run(suite, env, svctrace_args, backend="ebpf"):
    report = suite / "report.json"
    cmd = e2e.SVCTRACE + ["run", *svctrace_args, "--backend", backend, "--report", str(report),
                          "--progress", "0", "--", sys.executable, "-m", "pytest", "-q",
                          "-p", "no:cacheprovider"]
    proc = subprocess.run(cmd, cwd=suite, env=e2e.child_env(env), capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert report.exists(), proc.stdout + proc.stderr
    return json.loads(report.read_text()), proc


@needs("ebpf")
def test_call_sites_of_the_sample_suite(runs):
    suite, report, proc = runs["stacks"]
    assert proc.returncode == 0, proc.stdout + proc.stderr
    src, conftest = suite / "test_sample.py", suite / "conftest.py"

    # psycopg2's connect (libpq, a C library): the test's line that called connect
    pg = _stack(report, "test_pg_tcp_psycopg2", "postgres")
    assert pg["how"] == "frozen" and pg["late_ms"] is None
    assert pg["call_site"] == {"file": "test_sample.py", "function": "test_pg_tcp_psycopg2",
                               "line": _line(src, "def test_pg_tcp_psycopg2", "connect(")}
    assert pg["threads"][0]["frames"][0]["file"].endswith("psycopg2/__init__.py")

    # a pooled redis connection reused in a later test: that later test's line (a send)
    reuse = _stack(report, "test_redis_pool_reuse", "redis")
    assert reuse["test_frame"]["line"] == _line(src, "def test_redis_pool_reuse", ".set(")
    opened = _stack(report, "test_redis_pool_open", "redis")
    assert opened["test_frame"]["line"] == _line(src, "def test_redis_pool_open", ".ping(")

    # librdkafka connects from rdk:broker threads: the line that created the producer
    kafka = _stack(report, "test_kafka_mock_broker", "kafka")
    assert kafka["via"] == "thread creation"
    assert "rdk:" in kafka["contacting_thread"]
    assert kafka["call_site"]["line"] == _line(src, "def test_kafka_mock_broker", "Producer(")

    # a subprocess: its own stack (python -c), in its own pid
    sub_ev = report["tests"]["test_sample.py::test_subprocess_queries_postgres"][
        "evidence"]["postgres"]
    sub = sub_ev["first"]["stack"]
    assert sub_ev["processes"][str(sub_ev["first"]["pid"])]["role"] == "subprocess"
    assert sub["call_site"] == {"file": "<string>", "line": 1, "function": "<module>"}

    # fixtures: a function-scoped one in setup, and a session-scoped one
    setup = _stack(report, "test_setup_fixture", "postgres")
    assert setup["call_site"] == {"file": "conftest.py", "function": "pg_in_setup",
                                  "line": _line(conftest, "def pg_in_setup", "connect(")}
    session = report["fixtures"]["::pg_session"]["evidence"]["postgres"]["first"]["stack"]
    assert session["call_site"]["line"] == _line(conftest, "def pg_session", "connect(")

    # a Python thread of the test: its own frames
    thread = _stack(report, "test_thread_talks_to_redis", "redis")
    assert thread["via"] == "contacting thread"
    assert thread["threads"][0]["name"] == "bg-redis"

    stats = report["run"]["backend_stats"]["stacks"]
    assert stats["dumps"] >= 15 and stats["failed_dumps"] == 0


@needs("ebpf")
def test_the_process_goes_on_normally_after_each_stop(runs):
    """Same outcomes, same services, and no test slower than its stops account for."""
    _, plain, plain_proc = runs["plain"]
    _, frozen, frozen_proc = runs["stacks"]
    assert plain_proc.returncode == frozen_proc.returncode == 0
    assert {n: t["outcome"] for n, t in frozen["tests"].items()} == \
        {n: t["outcome"] for n, t in plain["tests"].items()}
    assert e2e.observed(frozen) == e2e.observed(plain) == e2e.expected("ebpf")
    assert e2e.inherited(frozen) == e2e.inherited(plain)
    assert frozen["run"]["lost_events"] == 0
    stats = frozen["run"]["backend_stats"]["stacks"]
    assert stats["stops"] >= stats["dumps"] > 0
    assert stats["max_held_ms"] < 1500  # a dump is ~35 ms; never a hung test
    slower = sum(t["duration_s"] for t in frozen["tests"].values()) - \
        sum(t["duration_s"] for t in plain["tests"].values())
    # what the stops held (all of it inside tests at most), plus noise of a shared machine
    assert slower <= stats["held_ms"] / 1000 + 2.0, (slower, stats)
    assert "stack" not in str(plain["tests"])  # off: nothing recorded


def test_inprocess_stacks_are_taken_inside_the_call(sample_suite, sample_env):
    """The in-process backend takes the stack in the patched socket call itself: exact
    (not late, nothing stopped), Python sockets only, no py-spy involved."""
    report, proc = _run(sample_suite, sample_env, ("--stacks",), backend="inprocess")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    src, conftest = sample_suite / "test_sample.py", sample_suite / "conftest.py"
    opened = _stack(report, "test_redis_pool_open", "redis")
    assert opened["how"] == "in-call" and opened["late_ms"] is None
    assert opened["test_frame"]["line"] == _line(src, "def test_redis_pool_open", ".ping(")
    reuse = _stack(report, "test_redis_pool_reuse", "redis")
    assert reuse["test_frame"]["line"] == _line(src, "def test_redis_pool_reuse", ".set(")
    thread = _stack(report, "test_thread_talks_to_redis", "redis")
    assert thread["via"] == "contacting thread" and thread["threads"][0]["name"] == "bg-redis"
    teardown = _stack(report, "test_teardown_only", "redis")  # the fixture's FLUSHDB
    assert teardown["call_site"] == {"file": "conftest.py", "function": "flush_redis",
                                     "line": _line(conftest, "def flush_redis", "flushdb(")}
    assert "stacks" not in report["run"]["backend_stats"]  # no py-spy dumps were needed


TWO_TESTS = '''\
import os
import socket


def _touch():
    socket.create_connection(("127.0.0.1", int(os.environ["STACKS_PORT"])), timeout=5).close()


def test_one():
    _touch()


def test_two():
    _touch()
'''


@needs("ebpf")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="util-linux unshare is missing")
def test_stacks_in_a_container_pid_namespace_with_xdist_workers(tmp_path):
    """The kernel's stop records carry the namespace's pids, which py-spy is given; xdist
    workers are stopped and dumped like the main pytest."""
    report, _ = e2e.run_one_file(
        tmp_path, "test_two.py", TWO_TESTS, "local-svc", ["--stacks", "-b", "ebpf"],
        ("-n", "2"), ("unshare", "--pid", "--fork", "--mount-proc"), port_env="STACKS_PORT")
    assert "nested" in report["run"]["pid_namespace"]
    touch = _line(tmp_path / "test_two.py", "def _touch", "create_connection")
    for name, line in (("test_one", 10), ("test_two", 14)):
        test = report["tests"][f"test_two.py::{name}"]
        assert test["worker"] in ("gw0", "gw1")
        stack = test["evidence"]["local-svc"]["first"]["stack"]
        assert stack["how"] == "frozen" and stack["late_ms"] is None
        assert stack["call_site"] == {"file": "test_two.py", "line": touch,
                                      "function": "_touch"}
        frames = stack["threads"][0]["frames"]  # the contacting (main) thread, innermost first
        assert {"file": "test_two.py", "line": line, "function": name} in \
            [{k: f[k] for k in ("file", "line", "function")} for f in frames]
