"""The guard end to end: tier jobs run guarded with a stale plan (a hidden Kafka producer
planned into the Postgres tier): the guard refuses Kafka at once, names the test and the
tier it belongs in, and the plan made from the tier jobs' own reports moves it there."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

from svctrace.config import Tier
from svctrace.plan.tiers import plan_tiers
from tests.support import e2e
from tests.support.backends import needs_backend as needs
from tests.support.services import kafka_mock_cluster
from tests.test_e2e_tiers import ALL, SUITE, _free_port, private_redis, write_config

STALE = "test_tiered.py::TestOrders::test_save_produces_to_kafka"
RIGHT = {
    "test_tiered.py::test_pure": "pg", "test_tiered.py::test_pg_only": "pg",
    "test_tiered.py::test_pg_again": "pg", "test_tiered.py::TestOrders::test_read": "pg",
    "test_tiered.py::test_pg_and_redis": "pg-redis", "test_tiered.py::test_redis_only": "pg-redis",
    STALE: "full", "test_tiered.py::test_kafka_only": "full"}
TIER_LIST = [Tier("pg", ("postgres",), 5), Tier("pg-redis", ("postgres", "redis"), 8),
             Tier("full", ("postgres", "redis", "kafka"), 240)]


def _stale_plan() -> dict:
    """The plan of a classification made before the test's save hook produced to Kafka."""
    services = {"pg": ["postgres"], "pg-redis": ["postgres", "redis"], "full": ["kafka"]}
    needs = {n: services[t] for n, t in RIGHT.items()}
    needs[STALE] = ["postgres"]
    report = {"tests": {n: {"ran": True, "needs": v, "duration_s": 0.1}
                        for n, v in needs.items()}}
    return plan_tiers(report, TIER_LIST)


@needs("ebpf")
def test_guarded_tier_jobs_name_the_misplaced_test_and_the_next_plan_fixes_it(tmp_path,
                                                                              services):
    suite = tmp_path / "suite"
    shutil.copytree(SUITE, suite, ignore=shutil.ignore_patterns("__pycache__"))
    plan = _stale_plan()
    assert plan["assignments"][STALE] == "pg"
    (suite / "plan.json").write_text(json.dumps(plan))
    redis_port = _free_port()
    pytest_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    # Every service is up: only the guard keeps a tier job to its tier's services.
    with private_redis(redis_port) as redis_url, kafka_mock_cluster() as bootstrap:
        write_config(suite, redis_port, bootstrap, services)
        env = e2e.child_env({"SVCTRACE_PG_DSN": services["pg_dsn"],
                             "TIER_REDIS_URL": redis_url, "TIER_KAFKA_BOOTSTRAP": bootstrap})
        runs = {}
        for tier in ("pg", "pg-redis", "full"):
            runs[tier] = subprocess.run(
                e2e.SVCTRACE + ["run", "-b", "ebpf", "-q", "--progress", "0", "-o",
                                f"{tier}.json", "--guard", "--"] + pytest_cmd +
                ["--svctrace-plan", "plan.json", "--svctrace-tier", tier],
                cwd=suite, env=env, capture_output=True, text=True, timeout=300,
                stdin=subprocess.DEVNULL)
    pg = runs["pg"]
    assert pg.returncode == 1, pg.stdout + pg.stderr  # the stale test failed in tier pg
    line = (f"svctrace: guard: {STALE} tried kafka, which tier 'pg' does not start: it "
            "belongs in tier 'full'")
    assert line in pg.stderr.splitlines(), pg.stderr
    assert pg.stderr.count("svctrace: guard: test_tiered") == 1
    for tier in ("pg-redis", "full"):
        assert runs[tier].returncode == 0, runs[tier].stdout + runs[tier].stderr
        assert "svctrace: guard: test_tiered" not in runs[tier].stderr
    report = json.loads((suite / "pg.json").read_text())
    assert report["run"]["guard"]["tier"] == "pg"
    assert set(report["run"]["denied_services"]) >= {"kafka", "redis"}
    stale = report["tests"][STALE]
    assert stale["denied"] == ["kafka"] and stale["outcome"] == "failed"
    assert stale["duration_s"] < 10  # flush(5) at most: never librdkafka's own timeouts
    assert [n for n, t in report["tests"].items() if t["denied"]] == [STALE]

    # The tier jobs' reports are the classification: merge them, plan again.
    merged = subprocess.run(e2e.SVCTRACE + ["merge", "-o", "merged.json", "pg.json",
                                            "pg-redis.json", "full.json"],
                            cwd=suite, capture_output=True, text=True, timeout=60)
    assert merged.returncode == 0, merged.stderr
    tiers = subprocess.run(e2e.SVCTRACE + ["tiers", "merged.json", "--plan-out", "next.json"],
                           cwd=suite, capture_output=True, text=True, timeout=60)
    assert tiers.returncode == 0, tiers.stderr
    assert json.loads((suite / "next.json").read_text())["assignments"] == RIGHT
    assert set(RIGHT) == ALL
