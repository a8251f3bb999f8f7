"""Tier planning, sharding, matrix, summary, plan files and the `svctrace tiers` CLI."""
from __future__ import annotations

import json
import random
import textwrap

import pytest
from click.testing import CliRunner

from svctrace import REPORT_SCHEMA
from svctrace.cli.plan import tiers_command
from svctrace.config import Tier
from svctrace.errors import SvctraceError
from svctrace.report.files import load_plan, write_lists, write_report
from svctrace.plan.tiers import (PLAN_SCHEMA, PlanError, TiersError, group_key,
                            incomplete_line, markdown_summary, matrix, plan_tiers, shard_assignment, tier_of,
                            time_saved_s)

TIERS = [
    Tier("full", ("postgres", "redis", "kafka", "clickhouse", "snuba"), 280.0),
    Tier("db", ("postgres", "redis"), 20.0),
    Tier("bare", (), 0.0),
    Tier("events", ("postgres", "redis", "kafka"), 120.0),
]


def make_report(tests: dict[str, tuple[list[str], float] | None]) -> dict:
    """A minimal report: nodeid -> (needs, duration), or None for collected only."""
    out = {}
    for nodeid, spec in tests.items():
        needs, duration = spec if spec else ([], 0.0)
        out[nodeid] = {"services": needs, "needs": needs, "ran": spec is not None,
                       "duration_s": duration, "outcome": "passed" if spec else "not run"}
    return {"schema": REPORT_SCHEMA, "run": {"backend": "ebpf"}, "tests": out}


REPORT = make_report({
    "tests/test_pure.py::test_math": ([], 0.5),
    "tests/test_models.py::test_save": (["postgres"], 2.0),
    "tests/test_models.py::test_cache": (["redis"], 1.0),
    "tests/test_events.py::TestProduce::test_send": (["kafka", "postgres"], 4.0),
    "tests/test_events.py::TestProduce::test_plain": ([], 1.0),
    "tests/test_events.py::test_query": (["clickhouse"], 3.0),
    "tests/test_search.py::test_index": (["elasticsearch", "postgres"], 6.0),
    "tests/test_new.py::test_never_ran": None,
})


def test_each_test_goes_to_the_cheapest_covering_tier() -> None:
    plan = plan_tiers(REPORT, TIERS)
    assert plan["schema"] == PLAN_SCHEMA
    assert plan["order"] == ["bare", "db", "events", "full"]
    assert plan["fallback"] == "full"
    a = plan["assignments"]
    assert a["tests/test_pure.py::test_math"] == "bare"
    assert a["tests/test_models.py::test_save"] == "db"
    assert a["tests/test_models.py::test_cache"] == "db"
    assert a["tests/test_events.py::TestProduce::test_send"] == "events"
    assert a["tests/test_events.py::TestProduce::test_plain"] == "bare"
    assert a["tests/test_events.py::test_query"] == "full"
    # Needs no tier covers: the most complete tier, and listed with what it lacks.
    assert a["tests/test_search.py::test_index"] == "full"
    assert plan["uncovered"] == {"tests/test_search.py::test_index": ["elasticsearch"]}
    # Only collected, never ran: nothing is known about it, so the safe tier.
    assert a["tests/test_new.py::test_never_ran"] == "full"
    assert plan["tiers"]["db"] == {"services": ["postgres", "redis"], "startup_s": 20.0,
                                   "tests": ["tests/test_models.py::test_cache",
                                             "tests/test_models.py::test_save"],
                                   "duration_s": 3.0}
    assert list(plan["tiers"]) == plan["order"]
    assert "tests/test_new.py::test_never_ran" not in plan["durations"]
    assert plan["default_duration_s"] == 2.0  # median of 0.5 1 1 2 3 4 6


def test_incomplete_tests_go_to_the_most_complete_tier_and_the_plan_says_how_many() -> None:
    report = make_report({"t.py::test_pg": (["postgres"], 1.0),
                          "t.py::test_lossy_pg": (["postgres"], 1.0),
                          "t.py::test_lossy_bare": ([], 1.0),
                          "t.py::test_lossy_full": (["clickhouse"], 1.0)})
    for nodeid in ("t.py::test_lossy_pg", "t.py::test_lossy_bare", "t.py::test_lossy_full"):
        report["tests"][nodeid].update(lost_events=3, incomplete=True)
    plan = plan_tiers(report, TIERS)
    assert plan["assignments"] == {"t.py::test_pg": "db", "t.py::test_lossy_pg": "full",
                                   "t.py::test_lossy_bare": "full",
                                   "t.py::test_lossy_full": "full"}
    # moved: the two whose observed needs alone put them in a cheaper tier
    assert plan["incomplete"] == ["t.py::test_lossy_bare", "t.py::test_lossy_pg"]
    assert incomplete_line(plan) == (
        "2 tests moved to full (the most complete tier): the backend lost records while "
        "they ran, so their needs may be incomplete")
    assert incomplete_line(plan) in markdown_summary(plan, matrix(plan))
    # the group of an incomplete test moves with it
    del report["tests"]["t.py::test_lossy_full"], report["tests"]["t.py::test_lossy_pg"]
    by_file = plan_tiers(report, TIERS, "file")
    assert by_file["assignments"] == {"t.py::test_pg": "full", "t.py::test_lossy_bare": "full"}
    assert by_file["incomplete"] == ["t.py::test_lossy_bare", "t.py::test_pg"]
    # nothing lost: no key, as before
    assert "incomplete" not in plan_tiers(REPORT, TIERS)
    assert incomplete_line(plan_tiers(REPORT, TIERS)) is None


def test_ties_prefer_fewer_services_then_name() -> None:
    tiers = [Tier("b", ("postgres", "redis"), 10), Tier("a", ("postgres", "redis"), 10),
             Tier("pg", ("postgres",), 10)]
    plan = plan_tiers(make_report({"t.py::test_pg": (["postgres"], 1.0)}), tiers)
    assert plan["order"] == ["pg", "a", "b"]
    assert plan["assignments"]["t.py::test_pg"] == "pg"
    assert plan["fallback"] == "a"  # most services, then costliest, then name


@pytest.mark.parametrize("granularity, expected", [
    ("test", {"TestProduce::test_plain": "bare", "test_query": "full", "TestProduce": "events"}),
    ("class", {"TestProduce::test_plain": "events", "test_query": "full",
               "TestProduce": "events"}),
    ("file", {"TestProduce::test_plain": "full", "test_query": "full", "TestProduce": "full"}),
])
def test_a_group_goes_where_its_most_demanding_test_goes(granularity, expected) -> None:
    plan = plan_tiers(REPORT, TIERS, granularity)
    a = plan["assignments"]
    assert a["tests/test_events.py::TestProduce::test_plain"] == expected["TestProduce::test_plain"]
    assert a["tests/test_events.py::TestProduce::test_send"] == expected["TestProduce"]
    assert a["tests/test_events.py::test_query"] == expected["test_query"]
    # Other files are unaffected by the events file's demands.
    assert a["tests/test_models.py::test_save"] == ("db" if granularity != "file" else "db")


def test_group_needs_are_the_union_of_its_tests() -> None:
    report = make_report({"t.py::TestX::test_pg": (["postgres"], 1.0),
                          "t.py::TestX::test_kafka": (["kafka"], 1.0)})
    tiers = [Tier("pg", ("postgres",), 5), Tier("kafka", ("kafka",), 5),
             Tier("both", ("kafka", "postgres"), 50)]
    assert set(plan_tiers(report, tiers, "class")["assignments"].values()) == {"both"}


def test_group_keys() -> None:
    nodeid = "tests/a.py::TestA::test_x[p::q]"
    assert group_key(nodeid, "test") == nodeid
    assert group_key(nodeid, "class") == "tests/a.py::TestA"
    assert group_key(nodeid, "file") == "tests/a.py"
    assert group_key("tests/a.py::test_y[1]", "class") == "tests/a.py::test_y[1]"
    assert group_key("tests/a.py::TestA::TestInner::test_z", "class") == \
        "tests/a.py::TestA::TestInner"


def test_unknown_tests_join_their_group_or_the_fallback() -> None:
    by_test = plan_tiers(REPORT, TIERS, "test")
    assert tier_of(by_test, "tests/test_models.py::test_save") == "db"
    assert tier_of(by_test, "tests/test_models.py::test_added_today") == "full"
    by_class = plan_tiers(REPORT, TIERS, "class")
    assert tier_of(by_class, "tests/test_events.py::TestProduce::test_added") == "events"
    assert tier_of(by_class, "tests/test_events.py::test_added") == "full"
    by_file = plan_tiers(REPORT, TIERS, "file")
    assert tier_of(by_file, "tests/test_models.py::test_added[1]") == "db"
    assert tier_of(by_file, "tests/test_brand_new.py::test_x") == "full"
    # A plan written by hand or by an older svctrace without the group index still works.
    del by_file["groups"]
    assert tier_of(by_file, "tests/test_models.py::test_added[1]") == "db"


@pytest.mark.parametrize("tiers, granularity, message", [
    ([], "test", "no tiers configured"),
    (TIERS, "module", "granularity 'module'"),
    ([Tier("db", ()), Tier("db", ("redis",))], "test", "configured twice"),
    ([Tier("../evil", ())], "test", "tier name '../evil'"),
])
def test_plan_errors(tiers, granularity, message) -> None:
    with pytest.raises(TiersError, match=message):
        plan_tiers(REPORT, tiers, granularity)


# ---------------------------------------------------------------- sharding

def _random_plan(seed: int, granularity: str = "test") -> tuple[dict, list[str]]:
    rng = random.Random(seed)
    tests = {}
    for f in range(rng.randint(1, 6)):
        for c in range(rng.randint(0, 3)):
            for t in range(rng.randint(1, 6)):
                tests[f"tests/test_{f}.py::TestC{c}::test_{t}"] = ([], round(rng.random() * 10, 3))
        for t in range(rng.randint(0, 6)):
            tests[f"tests/test_{f}.py::test_{t}"] = ([], round(rng.expovariate(0.5), 3))
    return plan_tiers(make_report(tests), TIERS, granularity), sorted(tests)


@pytest.mark.parametrize("seed", range(100))
def test_shards_are_balanced_and_deterministic(seed: int) -> None:
    plan, nodeids = _random_plan(seed)
    nodeids += [f"tests/test_unknown.py::test_{i}" for i in range(seed % 4)]
    rng = random.Random(seed)
    count = rng.randint(1, 6)
    shards = shard_assignment(plan, nodeids, count)
    assert set(shards) == set(nodeids)
    assert set(shards.values()) <= set(range(1, count + 1))
    shuffled = nodeids[:]
    rng.shuffle(shuffled)
    assert shard_assignment(plan, shuffled + shuffled[:3], count) == shards
    weight = lambda n: plan["durations"].get(n, plan["default_duration_s"])  # noqa: E731
    loads = [sum(weight(n) for n, s in shards.items() if s == i) for i in range(1, count + 1)]
    # Greedy LPT: the lightest shard took the last job, so the spread is at most one job.
    assert max(loads) - min(loads) <= max(map(weight, nodeids)) + 1e-9
    if len(nodeids) >= count:
        assert all(load > 0 for load in loads)


@pytest.mark.parametrize("seed", range(40))
@pytest.mark.parametrize("granularity", ["class", "file"])
def test_shards_keep_groups_together(seed: int, granularity: str) -> None:
    plan, nodeids = _random_plan(seed, granularity)
    shards = shard_assignment(plan, nodeids + ["tests/test_0.py::TestC0::test_new"], 3)
    by_group: dict[str, set[int]] = {}
    for nodeid, shard in shards.items():
        by_group.setdefault(group_key(nodeid, granularity), set()).add(shard)
    assert all(len(s) == 1 for s in by_group.values())


def test_shard_count_must_be_positive() -> None:
    with pytest.raises(TiersError):
        shard_assignment(plan_tiers(REPORT, TIERS), ["a"], 0)


def test_known_split() -> None:
    plan = plan_tiers(make_report({"a.py::t1": ([], 5.0), "a.py::t2": ([], 4.0),
                                   "a.py::t3": ([], 3.0), "a.py::t4": ([], 3.0)}), TIERS)
    assert shard_assignment(plan, ["a.py::t4", "a.py::t3", "a.py::t2", "a.py::t1", "b.py::new"],
                            2) == {"a.py::t1": 1, "a.py::t2": 2, "b.py::new": 2, "a.py::t3": 1,
                                   "a.py::t4": 2}  # new weighs the median, 3.5


# ---------------------------------------------------------------- matrix, summary, lists

def test_matrix_shards_by_duration_and_always_has_the_fallback() -> None:
    report = make_report({**{f"d.py::test_{i}": (["postgres"], 100.0) for i in range(25)},
                          "e.py::test_k": (["kafka"], 30.0)})
    plan = plan_tiers(report, TIERS)
    jobs = matrix(plan, target_shard_seconds=600)["include"]
    assert jobs == [
        *({"tier": "db", "shard": i, "shards": 5, "services": "postgres redis"}
          for i in range(1, 6)),
        {"tier": "events", "shard": 1, "shards": 1, "services": "kafka postgres redis"},
        {"tier": "full", "shard": 1, "shards": 1,
         "services": "clickhouse kafka postgres redis snuba"},
    ]
    fixed = matrix(plan, shards=3)["include"]
    assert [(j["tier"], j["shard"], j["shards"]) for j in fixed] == [
        ("db", 1, 3), ("db", 2, 3), ("db", 3, 3),
        ("events", 1, 1),  # one test cannot fill three shards
        ("full", 1, 3), ("full", 2, 3), ("full", 3, 3)]  # new tests may land here
    with pytest.raises(TiersError):
        matrix(plan, shards=0)


def test_markdown_summary_and_time_saved() -> None:
    plan = plan_tiers(REPORT, TIERS)
    jobs = matrix(plan, shards=2)
    # bare 2 shards, db 2, events 1 (one test), full 2: 7 jobs start 0+0+20+20+120+280+280.
    planned = 20 * 2 + 120 + 280 * 2
    # against what runs today: one job starting everything is cheaper than 7 jobs...
    assert time_saved_s(plan, jobs) == 280 - planned < 0
    text = markdown_summary(plan, jobs)
    assert "**Estimated service startup: this plan costs 7m 20s more** of CI machine " \
           "time. Today: 1 job starting the services of full (4m 40s each), 4m 40s in all; " \
           "this plan: 7 jobs starting their tier's services, 12m 00s in all." in text
    assert "Assumed: each job starts its tier's services once" in text
    # ...and 7 full jobs today cost more than these 7
    assert time_saved_s(plan, jobs, 7) == 7 * 280 - planned
    text = markdown_summary(plan, jobs, 7)
    assert "**Estimated service startup: this plan saves 20m 40s** of CI machine time. " \
           "Today: 7 jobs starting the services of full (4m 40s each), 32m 40s in all" in text
    assert "| db | postgres, redis | 20s | 2 | 25% | 3s | 2 |" in text
    assert "| bare | (none) | 0s | 2 | 25% | 2s | 2 |" in text
    assert "| full (fallback) | clickhouse, kafka, postgres, redis, snuba | 4m 40s | 3 |" in text
    assert "`tests/test_search.py::test_index`: elasticsearch" in text


def test_write_lists(tmp_path) -> None:
    plan = plan_tiers(REPORT, TIERS)
    paths = write_lists(plan, tmp_path / "tiers")
    assert [p.name for p in paths] == ["bare.txt", "db.txt", "events.txt", "full.txt"]
    assert (tmp_path / "tiers" / "db.txt").read_text() == \
        "tests/test_models.py::test_cache\ntests/test_models.py::test_save\n"
    lines = [line for p in paths for line in p.read_text().splitlines()]
    assert sorted(lines) == sorted(REPORT["tests"])


# ---------------------------------------------------------------- plan files

def test_load_plan_round_trip(tmp_path) -> None:
    plan = plan_tiers(REPORT, TIERS, "class")
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    loaded = load_plan(path)
    assert loaded == plan
    assert tier_of(loaded, "tests/test_events.py::TestProduce::test_added") == "events"


@pytest.mark.parametrize("content, message", [
    (None, "cannot read plan"),
    ("[1, 2", "is not valid JSON"),
    ('{"schema": "svctrace-report/1"}', "has schema 'svctrace-report/1'"),
    ('{"schema": "svctrace-plan/1", "tiers": {}}', "lacks granularity"),
])
def test_load_plan_errors_name_the_file(tmp_path, content, message) -> None:
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(PlanError, match=message) as info:
        load_plan(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, SvctraceError)


# ---------------------------------------------------------------- CLI

PYPROJECT = """\
[tool.svctrace]
[[tool.svctrace.tiers]]
name = "db"
services = ["postgres", "redis"]
startup_s = 20

[[tool.svctrace.tiers]]
name = "full"
services = ["postgres", "redis", "kafka"]
startup_s = 200
"""


def _project(tmp_path, pyproject: str = PYPROJECT) -> tuple[str, str]:
    config = tmp_path / "pyproject.toml"
    config.write_text(pyproject)
    report = write_report(make_report({"a.py::test_db": (["postgres"], 1.0),
                                       "a.py::test_k": (["kafka"], 1.0)}), tmp_path / "r.json")
    return str(config), str(report)


def test_cli_tiers_writes_every_output(tmp_path) -> None:
    config, report = _project(tmp_path)
    out = tmp_path / "out"
    result = CliRunner().invoke(tiers_command, [
        report, "--config", config, "--plan-out", str(out / "plan.json"),
        "--lists-dir", str(out / "lists"), "--matrix-out", str(out / "matrix.json"),
        "--summary-out", str(out / "summary.md"), "--shards", "2"])
    assert result.exit_code == 0, result.output + result.stderr
    plan = load_plan(out / "plan.json")
    assert plan["assignments"] == {"a.py::test_db": "db", "a.py::test_k": "full"}
    matrix_text = (out / "matrix.json").read_text()
    assert len(matrix_text.strip().splitlines()) == 1  # fits `echo matrix=... >> $GITHUB_OUTPUT`
    assert json.loads(matrix_text)["include"][0] == {"tier": "db", "shard": 1, "shards": 1,
                                                     "services": "postgres redis"}
    assert (out / "lists" / "db.txt").read_text() == "a.py::test_db\n"
    assert "## svctrace tiers" in (out / "summary.md").read_text()
    assert result.stdout == ""
    # 2 shards of full (200 s), one of db (20): against one job starting everything today
    assert "svctrace tiers: db 1, full 1; 3 jobs start services for 7m 00s in all, " \
           "against 3m 20s for today's 1 job starting everything: costs 3m 40s more" \
           in result.stderr
    again = CliRunner().invoke(tiers_command, [report, "--config", config, "--shards", "2",
                                               "--today-shards", "4"])
    assert "against 13m 20s for today's 4 jobs starting everything: saves 6m 20s" \
           in again.stderr
    assert "Today: 4 jobs starting the services of full (3m 20s each)" in again.stdout


def test_cli_tiers_prints_the_summary_by_default(tmp_path) -> None:
    config, report = _project(tmp_path)
    result = CliRunner().invoke(tiers_command, [report, "--config", config,
                                                                "--granularity", "file"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("## svctrace tiers")
    assert "at file granularity" in result.stdout


def test_cli_tiers_without_report_or_with_one_tier(tmp_path) -> None:
    config, report = _project(tmp_path)
    runner = CliRunner()
    result = runner.invoke(tiers_command, ["--config", config, "--shards", "3",
                                           "--plan-out", str(tmp_path / "p.json"),
                                           "--matrix-out", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.stderr
    assert "every test goes to tier 'full'" in result.stderr
    plan = load_plan(tmp_path / "p.json")
    assert tier_of(plan, "anything.py::test_x") == "full"
    assert [j["shard"] for j in json.loads((tmp_path / "m.json").read_text())["include"]] == \
        [1, 2, 3]
    result = runner.invoke(tiers_command, [report, "--one-tier", "--config", config,
                                           "--plan-out", str(tmp_path / "p.json")])
    assert result.exit_code == 0, result.stderr
    plan = load_plan(tmp_path / "p.json")
    assert list(plan["tiers"]) == ["full"]
    assert set(plan["assignments"].values()) == {"full"}


def test_cli_tiers_without_configured_tiers_shows_an_example(tmp_path) -> None:
    config, report = _project(tmp_path, "[tool.svctrace]\nbaseline = []\n")
    result = CliRunner().invoke(tiers_command, [report, "--config", config])
    assert result.exit_code == 2  # a configuration problem: nothing was done
    assert "no tiers configured" in result.output
    assert "[[tool.svctrace.tiers]]" in result.output and "startup_s" in result.output


def test_cli_tiers_errors(tmp_path) -> None:
    config, _ = _project(tmp_path)
    result = CliRunner().invoke(tiers_command, [str(tmp_path / "missing.json"),
                                                "--config", config])
    assert result.exit_code == 1 and "missing.json" in result.output
    result = CliRunner().invoke(tiers_command, ["--config", config, "--shards", "0"])
    assert result.exit_code == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[[tool.svctrace.tiers]]\nservices = ['x']\n")
    result = CliRunner().invoke(tiers_command, ["--config", str(bad)])
    assert result.exit_code == 2 and "needs name" in result.output  # configuration
    assert "--svctrace-plan" in CliRunner().invoke(tiers_command, ["--help"]).output


# ---------------------------------------------------------------- selection in pytest

def test_select_runs_only_the_tier_and_shard(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_sel=textwrap.dedent("""
        def test_a(): pass
        def test_b(): pass
        def test_c(): pass
        def test_new(): pass
    """))
    report = make_report({"test_sel.py::test_a": (["postgres"], 3.0),
                          "test_sel.py::test_b": (["postgres"], 2.0),
                          "test_sel.py::test_c": (["kafka"], 1.0)})
    plan = plan_tiers(report, TIERS)
    # Inside the test directory: pytest derives its rootdir (hence node ids) from path args.
    path = pytester.path / "plan.json"
    path.write_text(json.dumps(plan))
    result = pytester.runpytest("--svctrace-plan", str(path),
                                "--svctrace-tier", "db", "--svctrace-shard", "2/2", "-v")
    result.assert_outcomes(passed=1, deselected=3)
    result.stdout.fnmatch_lines(["*test_b PASSED*"])
    result = pytester.runpytest("--svctrace-plan", str(path),
                                "--svctrace-tier", "full", "-v")
    result.assert_outcomes(passed=1, deselected=3)  # test_new: unknown, most complete tier
    result.stdout.fnmatch_lines(["*1 not in the plan*", "*test_new PASSED*"])
