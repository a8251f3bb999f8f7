"""Tiers end to end: classify in 2 shards -> merge -> tiers -> each tier runs with only
its services up (the others really stopped): every test passes exactly once."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support import e2e
from tests.support.backends import AVAILABLE, BEST
from tests.support.services import kafka_mock_cluster

SUITE = Path(__file__).parent / "suites" / "tiered"
pytestmark = pytest.mark.skipif(
    BEST == "inprocess", reason="classifying needs a backend that sees libpq and librdkafka "
                                f"(ebpf or strace); here: {AVAILABLE}")
TIERS = """
[[tool.svctrace.tiers]]
name = "pg"
services = ["postgres"]
startup_s = 5
[[tool.svctrace.tiers]]
name = "pg-redis"
services = ["postgres", "redis"]
startup_s = 8
[[tool.svctrace.tiers]]
name = "full"
services = ["postgres", "redis", "kafka"]
startup_s = 240
"""
ALL = {"test_tiered.py::test_pure", "test_tiered.py::test_pg_only",
       "test_tiered.py::test_pg_again", "test_tiered.py::test_pg_and_redis",
       "test_tiered.py::test_redis_only", "test_tiered.py::TestOrders::test_save_produces_to_kafka",
       "test_tiered.py::TestOrders::test_read", "test_tiered.py::test_kafka_only"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def private_redis(port: int):
    """A Redis of this test's own, so stopping it cannot disturb other tests."""
    proc = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server",
                             "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def _run(cmd, cwd, env):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


def _ran(junit: Path) -> list[str]:
    """Node ids of the tests that ran, from pytest's JUnit XML."""
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        cls = case.get("classname", "").split(".")
        file = "test_tiered.py"
        middle = "::".join(cls[1:]) + "::" if len(cls) > 1 else ""
        out.append(f"{file}::{middle}{case.get('name')}")
    return out


def write_config(suite, redis_port: int, bootstrap: str, services: dict) -> None:
    """The suite's services (its private redis, the Kafka mock broker, PostgreSQL) and tiers."""
    (suite / "pyproject.toml").write_text(
        "[tool.svctrace.services]\n"
        f'redis = ["127.0.0.1:{redis_port}"]\nkafka = ["{bootstrap}"]\n'
        f'postgres = ["{services["pg_port"]}"]\n' + TIERS)


def test_classify_merge_tier_and_run_each_tier_with_only_its_services(tmp_path, services):
    redis_port, dead_kafka = _free_port(), f"127.0.0.1:{_free_port()}"
    suite = tmp_path / "suite"
    shutil.copytree(SUITE, suite, ignore=shutil.ignore_patterns("__pycache__"))
    base_env = e2e.child_env({"SVCTRACE_PG_DSN": services["pg_dsn"]})
    svctrace = e2e.SVCTRACE
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]

    # 1. classify with every service up, in two shards of a one-tier plan
    with private_redis(redis_port) as redis_url, kafka_mock_cluster() as bootstrap:
        write_config(suite, redis_port, bootstrap, services)
        env = {**base_env, "TIER_REDIS_URL": redis_url, "TIER_KAFKA_BOOTSTRAP": bootstrap}
        plan = _run(svctrace + ["tiers", "--one-tier", "--shards", "2", "--plan-out",
                                "classify.json"], suite, env)
        assert plan.returncode == 0, plan.stderr
        fallback = json.loads((suite / "classify.json").read_text())["fallback"]
        for shard in (1, 2):
            proc = _run(svctrace + ["run", "-b", BEST, "-q", "--progress", "0", "-o",
                                    f"r{shard}.json", "--"] + pytest_cmd +
                        ["--svctrace-plan", "classify.json", "--svctrace-tier", fallback,
                         "--svctrace-shard", f"{shard}/2"], suite, env)
            assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = [set(n for n, t in json.loads((suite / f"r{i}.json").read_text())["tests"].items()
               if t["ran"]) for i in (1, 2)]
    assert ran[0] and ran[1] and not ran[0] & ran[1] and ran[0] | ran[1] == ALL

    # 2. merge the shards, 3. plan the tiers
    merged = _run(svctrace + ["merge", "-o", "merged.json", "r2.json", "r1.json"], suite,
                  base_env)
    assert merged.returncode == 0, merged.stderr
    tiers = _run(svctrace + ["tiers", "merged.json", "--plan-out", "plan.json",
                             "--matrix-out", "matrix.json", "--summary-out", "summary.md"],
                 suite, base_env)
    assert tiers.returncode == 0, tiers.stderr
    plan = json.loads((suite / "plan.json").read_text())
    assert plan["assignments"] == {
        "test_tiered.py::test_pure": "pg", "test_tiered.py::test_pg_only": "pg",
        "test_tiered.py::test_pg_again": "pg", "test_tiered.py::TestOrders::test_read": "pg",
        "test_tiered.py::test_pg_and_redis": "pg-redis",
        "test_tiered.py::test_redis_only": "pg-redis",
        "test_tiered.py::TestOrders::test_save_produces_to_kafka": "full",
        "test_tiered.py::test_kafka_only": "full"}
    matrix = json.loads((suite / "matrix.json").read_text())
    assert {row["tier"] for row in matrix["include"]} == {"pg", "pg-redis", "full"}
    assert "pg-redis" in (suite / "summary.md").read_text()

    # 4. each tier with only its services: the others are really down
    ran_in_tiers: list[str] = []
    for tier in ("pg", "pg-redis", "full"):
        wants = set(plan["tiers"][tier]["services"])
        with (private_redis(redis_port) if "redis" in wants else _nothing(
                f"redis://127.0.0.1:{redis_port}/0")) as redis_url, \
             (kafka_mock_cluster() if "kafka" in wants else _nothing(dead_kafka)) as bootstrap:
            if "redis" not in wants:
                with socket.socket() as probe:
                    assert probe.connect_ex(("127.0.0.1", redis_port)) != 0
            env = {**base_env, "TIER_REDIS_URL": redis_url, "TIER_KAFKA_BOOTSTRAP": bootstrap}
            proc = _run(pytest_cmd + ["--svctrace-plan", "plan.json", "--svctrace-tier", tier,
                                      f"--junitxml={tier}.xml"], suite, env)
            assert proc.returncode == 0, f"tier {tier}:\n{proc.stdout}\n{proc.stderr}"
            assert f"svctrace: tier '{tier}'" in proc.stdout
        ran_in_tiers += _ran(suite / f"{tier}.xml")
    assert sorted(ran_in_tiers) == sorted(ALL)  # every test once: none twice, none missed


@contextmanager
def _nothing(value):
    yield value
