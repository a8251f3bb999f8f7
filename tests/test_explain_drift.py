"""`svctrace explain`, `drift` and `summary` on a real traced run of the sample suite."""
from __future__ import annotations

import subprocess

import pytest

from tests.support import e2e
from tests.support.backends import BEST

DECLARE = """
[tool.svctrace.declare.fixtures]
pg_in_setup = ["postgres"]
flush_redis = ["redis", "memcached"]
"""


@pytest.fixture(scope="module")
def traced(tmp_path_factory, sample_env):
    suite = e2e.copy_suite(tmp_path_factory.mktemp("explain"), sample_env, DECLARE)
    report, proc = e2e.run_svctrace(BEST, suite, sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return suite, report


def cli(suite, *args):
    return subprocess.run(e2e.SVCTRACE + list(args), cwd=suite, capture_output=True, text=True)


def test_explain_names_threads_phase_and_result(traced):
    suite, report = traced
    proc = cli(suite, "explain", "report.json", "test_sample.py::test_thread_talks_to_redis")
    assert proc.returncode == 0, proc.stderr
    assert "needs: redis" in proc.stdout
    assert "redis: 1 send from thread" in proc.stdout and "in call" in proc.stdout  # pooled
    if BEST == "inprocess":
        assert "from thread bg-redis" in proc.stdout


@pytest.mark.skipif(BEST != "ebpf", reason=f"needs the ebpf backend for librdkafka's threads "
                                            f"(best here: {BEST})")
def test_explain_kafka_refused_from_librdkafka_threads(traced):
    suite, _ = traced
    proc = cli(suite, "explain", "report.json", "test_sample.py::test_kafka_refused")
    line = next(l for l in proc.stdout.splitlines() if l.strip().startswith("kafka:"))
    assert "connects refused from thread rdk:" in line and "in call" in line
    assert "ms into call" in line


def test_explain_inherited_and_declared(traced):
    suite, _ = traced
    proc = cli(suite, "explain", "report.json", "test_sample.py::test_setup_fixture")
    assert "declared in [tool.svctrace.declare]: postgres" in proc.stdout
    if BEST != "inprocess":
        later = cli(suite, "explain", "report.json",
                    "test_sample.py::test_session_fixture_later").stdout
        assert "postgres (inherited): set up or torn down by ::pg_session" in later


def test_explain_unknown_test_suggests_close_names(traced):
    suite, _ = traced
    proc = cli(suite, "explain", "report.json", "test_sample.py::test_pg_tcp_psycopg")
    assert proc.returncode == 1
    assert "did you mean test_sample.py::test_pg_tcp_psycopg2" in proc.stderr


def test_drift_lists_hidden_dependencies_and_stale_declarations(traced):
    suite, report = traced
    proc = cli(suite, "drift", "report.json")
    assert proc.returncode == 0
    lines = proc.stdout.splitlines()
    assert lines[0] == "test_sample.py"
    assert "  stale declaration: memcached never observed in 1 test (e.g. test_teardown_only)" \
        in lines
    assert any(l.startswith("  hidden dependency: redis in") for l in lines)
    assert report["tests"]["test_sample.py::test_teardown_only"]["declared"] == [
        "memcached", "redis"]


def test_summary_matches_the_report(traced):
    suite, report = traced
    proc = cli(suite, "summary", "report.json")
    assert proc.returncode == 0
    assert f"backend {BEST}, {report['summary']['tests_ran']} tests ran" in proc.stdout
    assert "traffic outside tests: " in proc.stdout and "collection" in proc.stdout
