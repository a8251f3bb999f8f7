"""`svctrace explain`, `drift` and `summary` on a real traced run of the sample suite."""
from __future__ import annotations

import json
import subprocess
import sys

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
    lines = proc.stdout.splitlines()
    assert "  needs: redis  (observed redis)" in lines
    assert any(l.startswith("  redis: ") and l.endswith(" in call") for l in lines)  # pooled
    first = next(l for l in lines if l.strip().startswith("first:"))
    assert " by thread " in first and "ms into call" in first
    if BEST == "inprocess":
        assert "by thread bg-redis" in first


@pytest.mark.skipif(BEST != "ebpf", reason=f"needs the ebpf backend for librdkafka's threads "
                                            f"(best here: {BEST})")
def test_explain_kafka_refused_from_librdkafka_threads(traced):
    suite, report = traced
    proc = cli(suite, "explain", "report.json", "test_sample.py::test_kafka_refused")
    lines = proc.stdout.splitlines()
    n = report["tests"]["test_sample.py::test_kafka_refused"]["evidence"]["kafka"]["connects"]
    assert f"  kafka: {n} connects refused in call" in lines
    assert f"      to tcp:127.0.0.1:9092: {n} connects refused" in lines
    first = next(l for l in lines if l.strip().startswith("first:"))
    assert "by thread rdk:" in first and "ms into call" in first
    # a librdkafka thread of the pytest process: a thread, not a process of its own
    assert any("(the test's pytest process), threads " in l and "rdk:" in l for l in lines)


@pytest.mark.skipif(BEST == "inprocess", reason="the in-process backend cannot see libpq")
def test_explain_tells_a_subprocess_from_a_thread_with_its_whole_command_line(traced):
    suite, report = traced
    nodeid = "test_sample.py::test_subprocess_queries_postgres"
    proc = cli(suite, "explain", "report.json", nodeid)
    ev = report["tests"][nodeid]["evidence"]["postgres"]
    (pid, child), = [(p, c) for p, c in ev["processes"].items() if c["role"] == "subprocess"]
    line = next(l for l in proc.stdout.splitlines() if f"from pid {pid} " in l)
    assert f"(a subprocess, parent pid {child['ppid']})" in line
    # whole, or cut at a word boundary (the length depends on where the checkout lives)
    shown = line.split(": ", 1)[1]
    full = " ".join(child["cmdline"].split())
    assert "psycopg2.connect" in shown
    if shown.endswith(" …"):
        assert full.startswith(shown[:-2] + " ") and len(full) > 160
    else:
        assert shown == full
    assert "pytest process" not in line


@pytest.mark.skipif(BEST == "inprocess", reason="the in-process backend cannot see libpq")
def test_explain_points_to_traffic_reported_elsewhere(traced):
    suite, _ = traced
    out = cli(suite, "explain", "report.json", "test_sample.py::test_outliving_process").stdout
    assert "unattributed 'outlived-test' (process started in " \
           "test_sample.py::test_outliving_process)" in out
    assert "(a subprocess, parent pid" in out and "      postgres: 1 connect" in out
    assert "no contact observed in this test's own windows (backend " in out
    assert "see traffic reported elsewhere above" in out
    first = cli(suite, "explain", "report.json",
                "test_sample.py::test_session_fixture_first").stdout
    assert "session-scoped fixture ::pg_session ran in this test's setup: postgres " \
           "(this test uses it: inherited, in its needs)" in first


@pytest.mark.skipif(BEST == "inprocess", reason="librdkafka's mock broker is invisible "
                                                "in-process")
def test_explain_summarises_ignored_self_loopback_traffic(traced):
    suite, _ = traced
    out = cli(suite, "explain", "report.json",
              "test_sample.py::test_kafka_inprocess_mock_is_not_a_service").stdout
    line = next(l for l in out.splitlines() if l.startswith("  ignored "))
    assert "to and from its own listeners over loopback" in line and "tcp:127.0.0.1:" in line
    # by the mock broker's listener port only, never the client's ephemeral ports
    report = json.loads((suite / "report.json").read_text())
    labels = report["tests"]["test_sample.py::test_kafka_inprocess_mock_is_not_a_service"][
        "ignored"]["self_loopback"]
    assert len(labels) == 1, labels
    assert "see ignored traffic above" in out


def test_explain_selects_by_file_prefix_and_keyword_and_speaks_json(traced):
    suite, report = traced
    whole = cli(suite, "explain", "report.json", "test_sample.py").stdout
    heads = [l for l in whole.splitlines() if l.startswith("test_sample.py::")]
    assert len(heads) == len(report["tests"])
    proc = cli(suite, "explain", "report.json", "-k", "kafka and not mock", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["schema"] == "svctrace-explain/1"
    assert [t["nodeid"] for t in data["tests"]] == ["test_sample.py::test_kafka_refused"]
    prefix = cli(suite, "explain", "report.json", "test_sample.py::test_pg_pool").stdout
    assert [l.split(":")[2] for l in prefix.splitlines() if l.startswith("test_sample")] == [
        "test_pg_pool_open", "test_pg_pool_reuse"]


def test_explain_inherited_and_declared(traced):
    suite, _ = traced
    proc = cli(suite, "explain", "report.json", "test_sample.py::test_setup_fixture")
    assert "declared in [tool.svctrace.declare]: postgres" in proc.stdout
    if BEST != "inprocess":
        later = cli(suite, "explain", "report.json",
                    "test_sample.py::test_session_fixture_later").stdout
        assert "postgres (inherited, not observed in this test): set up or torn down by " \
               "::pg_session" in later


def test_explain_unknown_test_suggests_close_names(traced):
    suite, _ = traced
    proc = cli(suite, "explain", "report.json", "test_sample.py::test_pg_tcp_psycopg3")
    assert proc.returncode == 1
    assert "did you mean test_sample.py::test_pg_tcp_psycopg2" in proc.stderr
    assert cli(suite, "explain", "report.json", "-k", "nothing_like_it").returncode == 1


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
    spots = report["run"]["blind_spots"]
    # the blind spots: one pointer line by default, listed with -v
    assert "blind spot:" not in proc.stdout
    assert f"  {len(spots)} blind spots of the {BEST} backend: listed by `svctrace summary " \
           "-v`" in proc.stdout
    verbose = cli(suite, "summary", "-v", "report.json").stdout
    assert all(f"  blind spot: {spot}" in verbose.splitlines() for spot in spots)
    markdown = cli(suite, "summary", "--markdown", "report.json").stdout
    assert markdown.startswith("## svctrace\n")
    assert f"| {report['summary']['service_sets'][0]['tests']} | " in markdown
    if BEST != "inprocess":  # the session fixture's libpq traffic
        assert "postgres 9 (2 inherited from wider-scoped fixtures)" in proc.stdout


def test_list_prints_node_ids_that_pytest_runs(traced, sample_env):
    suite, report = traced
    expected = e2e.expected(BEST)
    kafka = [n for n, phases in expected.items() if "kafka" in sum(phases.values(), [])]
    proc = cli(suite, "list", "report.json", "--service", "kafka")
    if not kafka:  # the in-process backend: librdkafka is invisible, nothing to list
        assert proc.returncode == 1 and proc.stdout == ""
        assert proc.stderr == "svctrace list: no test in the report contacted kafka in " \
                              "its own windows (observed)\n"
        return
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [n for n in report["tests"] if n in kafka]
    # one node id per line: what a shell hands to pytest as they are
    collect = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                              "-p", "no:cacheprovider", *proc.stdout.split()],
                             cwd=suite, capture_output=True, text=True,
                             env=e2e.child_env(sample_env))
    assert [l for l in collect.stdout.splitlines() if "::" in l] == kafka, collect.stdout


def test_list_needs_inherited_and_denied(traced):
    suite, report = traced
    needs = cli(suite, "list", "report.json", "--needs", "postgres,redis").stdout.splitlines()
    assert needs == [n for n, t in report["tests"].items()
                     if {"postgres", "redis"} & set(t["needs"])]
    inherited = cli(suite, "list", "report.json", "--inherited", "postgres")
    want = sorted(e2e.expected_inherited(BEST))
    if want:
        assert sorted(inherited.stdout.splitlines()) == want
        # options together: all of them
        both = cli(suite, "list", "report.json", "--inherited", "postgres", "--service",
                   "postgres").stdout.splitlines()
        assert both == [n for n in want if "postgres" in report["tests"][n]["services"]]
    else:
        assert inherited.returncode == 1
    denied = cli(suite, "list", "report.json", "--denied", "redis")  # no guard in this run
    assert denied.returncode == 1 and denied.stdout == ""
    assert "no test in the report tried redis and was refused" in denied.stderr


def test_list_unknown_service_names_the_known_ones(traced):
    suite, report = traced
    proc = cli(suite, "list", "report.json", "--needs", "kafak")
    assert proc.returncode == 2 and proc.stdout == ""
    known = sorted({s for t in report["tests"].values() for s in t["needs"]})
    assert proc.stderr.startswith("svctrace: error: no service 'kafak' in the report or the "
                                  "service map; the report knows: ")
    assert all(s in proc.stderr for s in known) and "Traceback" not in proc.stderr
    # a service of the map that no test touched is no error: just no test
    assert cli(suite, "list", "report.json", "--service", "mongodb").returncode == 1
    none = cli(suite, "list", "report.json")
    assert none.returncode == 2 and "name a service" in none.stderr
