"""End-to-end helpers: the sample suite, running it under `svctrace run`, what to expect."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

SUITE = Path(__file__).resolve().parents[1] / "suites" / "services"
SVCTRACE = [sys.executable, "-m", "svctrace"]
KAFKA_REFUSED = "127.0.0.1:9092"  # the default kafka port; nothing may listen there

# What a backend that sees every socket (ebpf, strace) must report: test -> phase -> services.
# "refused" and "http-api" are resolved by sample_environment's service rules.
FULL = {
    "test_pg_tcp_psycopg2": {"call": ["postgres"]},
    "test_pg_unix_psycopg2": {"call": ["postgres"]},
    "test_pg_psycopg3": {"call": ["postgres"]},
    "test_pg_pool_open": {"call": ["postgres"]},
    "test_pg_pool_reuse": {"call": ["postgres"]},
    "test_redis_pool_open": {"call": ["redis"]},
    "test_redis_pool_reuse": {"call": ["redis"]},
    "test_teardown_only": {"teardown": ["redis"]},
    "test_setup_fixture": {"setup": ["postgres"]},
    "test_session_fixture_first": {},
    "test_session_fixture_later": {},
    "test_http_urllib3": {"call": ["http-api"]},
    "test_refused_connect": {"call": ["refused-svc"]},
    "test_subprocess_queries_postgres": {"call": ["postgres"]},
    "test_thread_talks_to_redis": {"call": ["redis"]},
    "test_kafka_refused": {"call": ["kafka"]},
    "test_kafka_mock_broker": {"call": ["kafka"]},
    "test_kafka_inprocess_mock_is_not_a_service": {},
    "test_multiprocessing_fork": {"call": ["redis"]},
    "test_multiprocessing_spawn": {"call": ["redis"]},
    "test_outliving_process": {},
    "test_after_outliving_process": {},
    "test_no_services": {},
}
INHERITED = {"test_session_fixture_first": {"postgres": ["::pg_session"]},
             "test_session_fixture_later": {"postgres": ["::pg_session"]}}
# The in-process backend cannot see libpq, librdkafka or a non-plugin subprocess.
INPROCESS_BLIND = {"postgres", "kafka"}


# A spawned interpreter does not load the plugin: invisible in-process.
INPROCESS_BLIND_TESTS = {"test_multiprocessing_spawn"}


def expected(backend: str) -> dict[str, dict[str, list[str]]]:
    out = {}
    for name, phases in FULL.items():
        full = {p: phases.get(p, []) for p in ("setup", "call", "teardown")}
        if backend == "inprocess":
            full = {p: [s for s in svcs if s not in INPROCESS_BLIND
                        and name not in INPROCESS_BLIND_TESTS] for p, svcs in full.items()}
        out[f"test_sample.py::{name}"] = full
    return out


def expected_inherited(backend: str) -> dict[str, dict[str, list[str]]]:
    if backend == "inprocess":
        return {}  # the session fixture's traffic is libpq's: invisible in-process
    return {f"test_sample.py::{name}": inh for name, inh in INHERITED.items()}


def sample_environment(services: dict, kafka_bootstrap: str, http_url: str,
                       refused_port: int) -> dict:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 9092)) == 0:
            raise RuntimeError("something listens on 127.0.0.1:9092; the refused-Kafka test "
                               "needs that port closed")
    http_hostport = http_url.split("//")[1].rstrip("/")
    return {
        "SVCTRACE_PG_DSN": services["pg_dsn"],
        "SVCTRACE_PG_SOCKET_DIR": services["pg_socket_dir"],
        "SVCTRACE_PG_PORT": str(services["pg_port"]),
        "SVCTRACE_REDIS_URL": services["redis_url"],
        "SVCTRACE_HTTP_URL": http_url,
        "SVCTRACE_REFUSED_PORT": str(refused_port),
        "SVCTRACE_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "SVCTRACE_KAFKA_REFUSED": KAFKA_REFUSED,
        "_PYPROJECT": (
            "[tool.svctrace]\n"
            "[tool.svctrace.services]\n"
            f'kafka = ["{kafka_bootstrap}"]\n'
            f'http-api = ["{http_hostport}"]\n'
            f'refused-svc = ["127.0.0.1:{refused_port}"]\n'
            f'postgres = ["{services["pg_port"]}"]\n'
            f'redis = ["{services["redis_port"]}"]\n'),
    }


def copy_suite(tmp_path: Path, env: dict, extra_toml: str = "") -> Path:
    target = tmp_path / "suite"
    shutil.copytree(SUITE, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "pyproject.toml").write_text(env["_PYPROJECT"] + extra_toml)
    return target


def child_env(env: dict) -> dict:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SVCTRACE_PIPE")}
    out.update({k: v for k, v in env.items() if not k.startswith("_")})
    out["PYTHONDONTWRITEBYTECODE"] = "1"
    return out


def run_svctrace(backend: str, suite: Path, env: dict, pytest_args: tuple = (),
                 report_name: str = "report.json", timeout: float = 300) -> tuple[dict, object]:
    report = suite / report_name
    cmd = SVCTRACE + ["run", "--backend", backend, "--report", str(report), "--progress", "0",
                      "--", sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                      *pytest_args]
    proc = subprocess.run(cmd, cwd=suite, env=child_env(env), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    if not report.exists():
        raise AssertionError(f"no report; exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return json.loads(report.read_text()), proc


def observed(report: dict) -> dict[str, dict[str, list[str]]]:
    return {nodeid: test["phases"] for nodeid, test in report["tests"].items()}


def inherited(report: dict) -> dict[str, dict[str, list[str]]]:
    return {nodeid: test["inherited"] for nodeid, test in report["tests"].items()
            if test["inherited"]}


def unattributed(report: dict) -> dict[str, set[str]]:
    """{reason: services} of the traffic outside tests."""
    out: dict[str, set[str]] = {}
    for entry in report["unattributed"]:
        out.setdefault(entry["reason"], set()).update(entry["services"])
    return out


def run_one_file(tmp_path: Path, name: str, code: str, service: str,
                 svctrace_args: list[str], pytest_args: tuple = (), prefix: tuple = (),
                 port_env: str = "SERVICE_PORT", config: str = "", expect_status: int = 0,
                 python: str = sys.executable) -> tuple[dict, object]:
    """A one-file suite against a TCP listener of the test's own, named `service` in the
    suite's pyproject (plus CONFIG, [tool.svctrace] keys); its port is in the suite's
    environment as `port_env`. Returns the report of `svctrace run SVCTRACE_ARGS -- PYTHON -m
    pytest` (prefixed by PREFIX, e.g. unshare), which must exit with EXPECT_STATUS."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    (tmp_path / name).write_text(code)
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.svctrace]\n{config}\n[tool.svctrace.services]\n{service} = ["127.0.0.1:{port}"]\n')
    cmd = [*prefix, *SVCTRACE, "run", *svctrace_args, "-o", "r.json", "--progress", "0", "--",
           python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *pytest_args, name]
    try:
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                              env={**os.environ, port_env: str(port)},
                              stdin=subprocess.DEVNULL)
    finally:
        listener.close()
    assert proc.returncode == expect_status, proc.stdout + proc.stderr
    return json.loads((tmp_path / "r.json").read_text()), proc
