"""svctrace prove's pure side: verdicts from a control and a denied run, proven needs in the
tiers plan, merge of proofs from shards (conflict), and the views' verdict lines."""
from __future__ import annotations

import copy

import pytest

from svctrace.config import Tier
from svctrace.plan import proof
from svctrace.plan.tiers import moved_by_proof, plan_tiers
from svctrace.report.merge import merge_reports
from svctrace.views.explain import explain_one
from svctrace.views.summary import format_summary


@pytest.mark.parametrize("traced, control, denied, expected", [
    ("passed", "passed", "passed", ("not_needed", "passed with redis refused")),
    ("passed", "passed", "failed", ("needed", "failed with redis refused, passed in the "
                                              "control run")),
    ("passed", "passed", "error", ("needed", "error with redis refused, passed in the "
                                             "control run")),
    ("failed", "failed", "failed", ("unproven", "failed in the control run too, with "
                                                "nothing refused")),
    ("failed", "passed", "passed", ("unproven", "flaky: failed in the traced run, passed in "
                                                "the control run")),
    ("passed", "skipped", "skipped", ("unproven", "skipped in the control run too, with "
                                                  "nothing refused")),
    ("passed", "passed", "skipped", ("unproven", "skipped with redis refused")),
    ("passed", "passed", "interrupted", ("unproven", "the run with redis refused did not "
                                                     "finish it")),
    ("passed", "interrupted", None, ("unproven", "the control run did not finish it")),
    ("passed", None, None, ("unproven", "the control run did not finish it")),
])
def test_verdict_table(traced, control, denied, expected):
    assert proof.verdict("redis", traced, control, denied) == expected


def _test(services, outcome="passed", inherited=None, denied=(), needs=None):
    return {"services": services, "outcome": outcome, "ran": True,
            "inherited": inherited or {}, "denied": list(denied),
            "needs": sorted(needs if needs is not None else
                            set(services) | set(inherited or {})),
            "phases": {"setup": [], "call": services, "teardown": []}, "duration_s": 0.1,
            "denied_evidence": {}}


def _report(tests, run_id="r1"):
    return {"schema": "svctrace-report/1",
            "run": {"run_id": run_id, "backend": "ebpf", "exit_code": 1, "command": ["pytest"],
                    "lost_events": 0, "blind_spots": [], "baseline": []},
            "tests": tests, "unattributed": [], "fixtures": {}, "summary": {"incidental": []}}


def _sample():
    return _report({
        "t.py::cache": _test(["redis", "postgres"]),
        "t.py::needs_redis": _test(["redis"]),
        "t.py::session_user": _test([], inherited={"postgres": ["::pg"]}),
        "t.py::broken": _test(["redis"], outcome="failed"),
        "t.py::quiet": _test([]),
    })


def test_candidates_are_the_tests_that_touched_each_deniable_service():
    chosen, notes = proof.candidates(_sample(), None, {"redis", "postgres"})
    assert chosen == {"postgres": ["t.py::cache", "t.py::session_user"],
                      "redis": ["t.py::cache", "t.py::needs_redis", "t.py::broken"]}
    assert notes == []
    chosen, notes = proof.candidates(_sample(), ["redis", "kafka", "10.0.0.1:80"],
                                     {"redis", "postgres", "kafka"})
    assert list(chosen) == ["redis"]
    assert notes[0].startswith("kafka: no test of the report touched it")
    report = _report({"t.py::a": _test(["10.0.0.1:80"])})
    chosen, notes = proof.candidates(report, None, {"redis"})
    assert chosen == {} and "guard cannot refuse it" in notes[0]


def _runs(outcomes):
    return {"tests": {n: {"outcome": o, "ran": o != "not run", "denied_evidence": {}}
                      for n, o in outcomes.items()}}


def _proven(report, run_id="r1", redis_denied=None):
    redis_ids = ["t.py::cache", "t.py::needs_redis", "t.py::broken"]
    control = _runs({"t.py::cache": "passed", "t.py::needs_redis": "passed",
                     "t.py::broken": "failed"})
    denied = _runs(redis_denied or {"t.py::cache": "passed", "t.py::needs_redis": "failed",
                                    "t.py::broken": "failed"})
    denied["tests"]["t.py::needs_redis"]["denied_evidence"] = {"redis": {
        "connects": 2, "sends": 0, "first": {"thread": "python", "destination":
                                            "127.0.0.1:6379", "phase": "call",
                                            "result": "refused"}}}
    proofs = {"redis": proof.prove_service(report, "redis", redis_ids, control, denied, run_id)}
    return proof.attach(report, proofs)


def test_attach_gives_each_tested_service_a_verdict_and_evidence():
    report = _proven(_sample())
    tests = report["tests"]
    assert tests["t.py::cache"]["needs_proof"] == {"redis": "not_needed"}
    assert tests["t.py::needs_redis"]["needs_proof"] == {"redis": "needed"}
    assert tests["t.py::broken"]["needs_proof"] == {"redis": "unproven"}
    assert "needs_proof" not in tests["t.py::quiet"]
    record = tests["t.py::needs_redis"]["proof"]["redis"]
    assert record["denied_run"] == "failed" and record["control"] == "passed"
    assert record["refused"] == {"thread": "python", "destination": "127.0.0.1:6379",
                                 "phase": "call", "result": "refused", "refusals": 2}
    assert proof.proven_needs(tests["t.py::cache"]) == ["postgres"]
    assert proof.proven_needs(tests["t.py::needs_redis"]) == ["redis"]


TIERS = [Tier("db", ("postgres",), 10.0), Tier("full", ("postgres", "redis"), 60.0)]


def test_tiers_plan_needs_minus_not_needed_and_count_the_moves():
    report = _proven(_sample())
    plan = plan_tiers(report, TIERS)
    assert plan["assignments"]["t.py::cache"] == "db"          # redis proven not needed
    assert plan["assignments"]["t.py::needs_redis"] == "full"
    assert plan["assignments"]["t.py::broken"] == "full"        # unproven: stays
    assert moved_by_proof(report, TIERS) == 1
    assert moved_by_proof(_sample(), TIERS) == 0


def test_merge_of_proofs_names_both_shards_of_a_conflict():
    a = _proven(_sample(), "shard-a")
    b = _proven(_sample(), "shard-b", {"t.py::cache": "failed", "t.py::needs_redis": "failed",
                                       "t.py::broken": "failed"})
    merged = merge_reports([a, b])
    cache = merged["tests"]["t.py::cache"]
    assert cache["needs_proof"] == {"redis": "unproven"}
    record = cache["proof"]["redis"]
    assert record["conflict"] == {"needed": ["shard-b"], "not_needed": ["shard-a"]}
    assert record["why"] == "conflict: needed in shard shard-b, not needed in shard shard-a"
    # agreement stays decisive; merge is order-free and idempotent
    assert merged["tests"]["t.py::needs_redis"]["needs_proof"] == {"redis": "needed"}
    assert merge_reports([b, a]) == merged
    assert merge_reports([merged, a]) == merged
    # a shard that proved nothing does not undo one that did
    c = _proven(_sample(), "shard-c", {"t.py::cache": "interrupted",
                                       "t.py::needs_redis": "failed", "t.py::broken": "failed"})
    cache = merge_reports([a, c])["tests"]["t.py::cache"]
    assert cache["needs_proof"] == {"redis": "not_needed"}
    assert cache["proof"]["redis"]["why"] == "passed with redis refused"


def test_views_show_the_verdicts():
    report = _proven(_sample())
    report["summary"] = {"tests": 5, "tests_ran": 5, "services": {}, "service_sets": [],
                         "incidental": [], "denied": []}
    text = format_summary(copy.deepcopy(report), verbose=True, moved=1)
    assert "redis: 1 needed, 1 not needed, 1 unproven" in text
    assert "1 moved to a cheaper tier because of proof" in text
    assert "t.py::cache: redis: used, not needed (passed with redis refused)" in text
    from svctrace.views.summary import markdown_summary
    report["run"]["notes"] = []
    assert "| redis | 1 | 1 | 1 |" in markdown_summary(report)
    report["tests"]["t.py::needs_redis"]["evidence"] = {}
    explained = explain_one(report, "t.py::needs_redis")
    assert ("redis: used, needed (failed with redis refused, passed in the control run); "
            "first refused: 127.0.0.1:6379 from thread python in call") in explained
