"""End to end: `svctrace run` on a real suite (PostgreSQL, Redis, Kafka mock broker, HTTP)."""
from __future__ import annotations

import pytest

from tests.support import e2e
from tests.support.backends import needs_backend as needs


def _check(report: dict, backend: str) -> None:
    assert report["run"]["backend"] == backend
    assert report["run"]["exit_code"] == 0
    assert report["run"]["lost_events"] == 0
    assert e2e.observed(report) == e2e.expected(backend)
    assert e2e.inherited(report) == e2e.expected_inherited(backend)
    outside = e2e.unattributed(report)
    assert "refused-svc" in outside["collection"]
    if backend != "inprocess":  # the orphan is a plain interpreter using libpq
        assert outside["outlived-test"] == {"postgres"}


def test_inprocess_backend_sees_python_sockets_only(sample_suite, sample_env):
    report, proc = e2e.run_svctrace("inprocess", sample_suite, sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check(report, "inprocess")
    assert any("libpq" in spot for spot in report["run"]["blind_spots"])
    thread = report["tests"]["test_sample.py::test_thread_talks_to_redis"]["evidence"]["redis"]
    assert thread["background"] is True and thread["first"]["thread"] == "bg-redis"


@needs("ebpf")
def test_ebpf_backend_exact_per_phase_services(sample_suite, sample_env):
    report, proc = e2e.run_svctrace("ebpf", sample_suite, sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check(report, "ebpf")
    tests = report["tests"]
    kafka = tests["test_sample.py::test_kafka_refused"]["evidence"]["kafka"]
    assert kafka["background"] is True
    assert any(t.startswith("rdk:") for t in kafka["threads"])
    assert kafka["failed_connects"] == kafka["connects"] > 0
    assert kafka["first"]["result"] == "refused"
    mock = tests["test_sample.py::test_kafka_mock_broker"]["evidence"]["kafka"]
    assert mock["sends"] > 0 and any(t.startswith("rdk:") for t in mock["threads"])
    reuse = tests["test_sample.py::test_pg_pool_reuse"]["evidence"]["postgres"]
    assert reuse["connects"] == 0 and reuse["sends"] > 0
    unix = tests["test_sample.py::test_pg_unix_psycopg2"]["evidence"]["postgres"]
    assert all(d.startswith("unix:") and d.endswith(".s.PGSQL." + sample_env["SVCTRACE_PG_PORT"])
               for d in unix["destinations"])
    sub = tests["test_sample.py::test_subprocess_queries_postgres"]["evidence"]["postgres"]
    assert "psycopg2.connect" in sub["first"]["cmdline"]


@needs("ebpf")
def test_ebpf_shows_what_inprocess_misses(sample_suite, sample_env, tmp_path):
    kernel, _ = e2e.run_svctrace("ebpf", sample_suite, sample_env, report_name="k.json")
    python, _ = e2e.run_svctrace("inprocess", sample_suite, sample_env, report_name="p.json")
    missed = {nodeid: sorted(set(kernel["tests"][nodeid]["services"])
                             - set(python["tests"][nodeid]["services"]))
              for nodeid in kernel["tests"]}
    missed = {k: v for k, v in missed.items() if v}
    assert missed["test_sample.py::test_pg_tcp_psycopg2"] == ["postgres"]
    assert missed["test_sample.py::test_kafka_mock_broker"] == ["kafka"]
    # redis only where a spawned interpreter (no plugin in it) talked to it
    assert missed["test_sample.py::test_multiprocessing_spawn"] == ["redis"]
    assert set().union(*map(set, missed.values())) == {"postgres", "kafka", "redis"}


@needs("strace")
def test_strace_report_equals_ebpf_report(sample_suite, sample_env):
    report, proc = e2e.run_svctrace("strace", sample_suite, sample_env, report_name="s.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _check(report, "strace")


@needs("ebpf")
@pytest.mark.parametrize("dist", ["load", "loadfile", "worksteal"])
def test_xdist_agrees_with_serial(sample_suite, sample_env, dist):
    report, proc = e2e.run_svctrace("ebpf", sample_suite, sample_env,
                                    ("-n", "2", "--dist", dist), report_name=f"x-{dist}.json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = e2e.expected("ebpf")
    inherited = e2e.expected_inherited("ebpf")
    for nodeid, test in report["tests"].items():
        want = set().union(*map(set, expected[nodeid].values())) | set(inherited.get(nodeid, {}))
        assert set(test["services"]) | set(test["inherited"]) == want, nodeid
    if dist != "loadfile":
        assert {t["worker"] for t in report["tests"].values()} == {"gw0", "gw1"}
