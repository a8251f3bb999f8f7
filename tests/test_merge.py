"""Merge properties (union, idempotent, order-independent, associative) on generated reports."""
from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from svctrace.join.attribution import Attribution, TestRecord
from svctrace.join.evidence import Contact
from svctrace.cli.plan import merge_command
from svctrace.config import Config
from svctrace.errors import SvctraceError
from svctrace.events import TEST_PHASES, RunInfo, TestInfo
from svctrace.report.merge import MergeError, merge_reports
from svctrace.report.build import build_report
from svctrace.report.files import load_report, write_report
from svctrace.views.summary import format_summary

ITERATIONS = 150
NODEIDS = [
    "tests/test_api.py::test_list",
    "tests/test_api.py::test_create[a]",
    "tests/test_api.py::test_create[b::c]",
    "tests/test_api.py::TestAuth::test_login",
    "tests/test_api.py::TestAuth::test_logout",
    "tests/test_events.py::TestProduce::test_send",
    "tests/test_events.py::TestProduce::test_flush",
    "tests/test_events.py::test_consume",
    "tests/test_models.py::test_save",
    "tests/test_models.py::test_delete",
    "tests/test_cache.py::test_hit",
    "tests/test_cache.py::test_miss",
]
SERVICES = ["postgres", "redis", "kafka", "clickhouse", "127.0.0.1:8080"]
FIXTURES = ["tests/conftest.py::db", "tests/conftest.py::cache", "::session_kafka"]
REASONS = [("session", "session start, before the first test"),
           ("between-tests", "after tests/test_api.py::test_list"),
           ("outside-session", "before pytest's session started")]


def _contact(rng: random.Random, phase: str) -> Contact:
    ts = rng.randrange(10**9)
    return Contact(
        connects=rng.randint(0, 4), sends=rng.randint(0, 50),
        failed_connects=rng.randint(0, 1), background=rng.random() < 0.2,
        threads=set(rng.sample(["MainThread", "rdk:main", "rdk:broker1", ""], rng.randint(0, 2))),
        destinations=set(rng.sample(["127.0.0.1:5432", "/var/run/postgresql/.s.PGSQL.5432",
                                     "127.0.0.1:6379", "127.0.0.1:9092"], rng.randint(1, 2))),
        fixtures=set(rng.sample(FIXTURES, rng.randint(0, 2))),
        outside_fixtures=rng.random() < 0.5,
        first={"phase": phase, "offset_ms": round(rng.random() * 100, 3),
               "pid": rng.randint(100, 200), "kind": rng.choice(["connect", "send"])},
        first_ts=ts)


def random_report(rng: random.Random, backend: str = "ebpf") -> dict:
    """A real build_report output over a random subset of NODEIDS, some only collected."""
    tests = {}
    chosen = set(rng.sample(NODEIDS, rng.randint(1, len(NODEIDS))))
    for nodeid in (n for n in NODEIDS if n in chosen):  # one collection's order, as pytest
        record = TestRecord(nodeid, worker=rng.choice([None, "gw0", "gw1"]),
                            info=TestInfo(nodeid, fixtures=tuple(rng.sample(FIXTURES, 1)),
                                          path=nodeid.split("::")[0]))
        record.ran = rng.random() < 0.7
        if record.ran:
            for phase in TEST_PHASES:
                record.outcomes[phase] = rng.choice(["passed"] * 5 + ["failed", "skipped"])
                record.durations[phase] = round(rng.random(), 4)
                for service in rng.sample(SERVICES, rng.randint(0, 2)):
                    record.phases[phase][service] = _contact(rng, phase)
        tests[nodeid] = record
    fixture_services = {fid: {s: _contact(rng, "setup")
                              for s in rng.sample(SERVICES[:3], rng.randint(0, 1))}
                        for fid in FIXTURES}
    unattributed = {key: {s: _contact(rng, "session") for s in rng.sample(SERVICES, 1)}
                    for key in rng.sample(REASONS, rng.randint(0, 2))}
    att = Attribution(tests, unattributed, fixture_services,
                      {fid: rng.choice(["session", "function", "?"]) for fid in FIXTURES},
                      {"events": rng.randint(0, 100)})
    cfg = Config(baseline=rng.choice([[], ["redis"]]))
    run = RunInfo(backend, ("pytest", "-q", f"--shard={rng.randint(1, 4)}"),
                  tuple(rng.sample(["no IPv6", "no UDP peers"], rng.randint(0, 1))),
                  rng.choice([0, 1, 2, None]))
    report = build_report(att, run, cfg, {"lost_events": rng.randint(0, 3)})
    report["run"]["run_id"] = f"run-{rng.getrandbits(48):012x}"  # seeded, unlike uuid4
    return report


def _inputs(seed: int) -> list[dict]:
    rng = random.Random(seed)
    reports = [random_report(rng) for _ in range(rng.randint(1, 4))]
    if rng.random() < 0.3:  # a shard uploaded twice
        reports.append(json.loads(json.dumps(rng.choice(reports))))
    return reports


def _dump(report: dict) -> str:
    return json.dumps(report)  # not sort_keys: the key order must not depend on input order


@pytest.mark.parametrize("seed", range(ITERATIONS))
def test_union_of_evidence(seed: int) -> None:
    inputs = _inputs(seed)
    merged = merge_reports(inputs)
    for report in inputs:
        run_id = report["run"]["run_id"]
        for nodeid, test in report["tests"].items():
            out = merged["tests"][nodeid]
            assert set(test["services"]) <= set(out["services"])
            assert set(test["needs"]) <= set(out["needs"])
            for phase, services in test["phases"].items():
                assert set(services) <= set(out["phases"][phase])
            for service, ev in test["evidence"].items():
                got = out["evidence"][service]
                for count in ("connects", "sends", "failed_connects"):
                    assert got[count] >= ev[count]
                assert set(ev["destinations"]) <= set(got["destinations"])
                assert set(ev["phases"]) <= set(got["phases"])
            if test["ran"]:
                assert out["ran"] and run_id in out["ran_in"]
                assert out["duration_s"] >= test["duration_s"]
    ran_anywhere = {n for r in inputs for n, t in r["tests"].items() if t["ran"]}
    assert {n for n, t in merged["tests"].items() if t["ran"]} == ran_anywhere
    assert set(merged["tests"]) == {n for r in inputs for n in r["tests"]}
    assert merged["summary"]["tests_ran"] == len(ran_anywhere)


@pytest.mark.parametrize("seed", range(ITERATIONS))
def test_idempotent(seed: int) -> None:
    inputs = _inputs(seed)
    merged = merge_reports(inputs)
    assert _dump(merge_reports([merged])) == _dump(merged)
    assert _dump(merge_reports([merged, merged])) == _dump(merged)
    assert _dump(merge_reports(inputs + inputs)) == _dump(merged)
    assert _dump(merge_reports(inputs + [merged])) == _dump(merged)


@pytest.mark.parametrize("seed", range(ITERATIONS))
def test_order_independent(seed: int) -> None:
    inputs = _inputs(seed)
    expected = _dump(merge_reports(inputs))
    rng = random.Random(seed)
    for _ in range(4):
        shuffled = inputs[:]
        rng.shuffle(shuffled)
        assert _dump(merge_reports(shuffled)) == expected


def _keeps_order(merged: dict, inputs: list[dict]) -> bool:
    where = {nodeid: i for i, nodeid in enumerate(merged["tests"])}
    return all([where[n] for n in r["tests"]] == sorted(where[n] for n in r["tests"])
               for r in inputs)


def _by_nodeid(report: dict) -> str:
    return _dump({**report, "tests": dict(sorted(report["tests"].items()))})


@pytest.mark.parametrize("seed", range(ITERATIONS))
def test_associative(seed: int) -> None:
    """The same content whatever the grouping. (Tests no input orders against each other go
    by node id in each merge, and a later merge takes that as an order: the flat merge keeps
    every input's order, a grouped one the order of what it was given.)"""
    rng = random.Random(seed)
    a, b, c = (random_report(rng) for _ in range(3))
    flat = merge_reports([a, b, c])
    assert _keeps_order(flat, [a, b, c])
    for grouped in (merge_reports([merge_reports([a, b]), c]),
                    merge_reports([a, merge_reports([b, c])]),
                    merge_reports([merge_reports([a, c]), merge_reports([b])])):
        assert _by_nodeid(grouped) == _by_nodeid(flat)


def test_merged_tests_keep_pytests_order() -> None:
    """Shards of one collection: each shard's run order is kept; where no shard orders two
    tests, node ids decide; reports that disagree (pytest-randomly) still give every test."""
    rng = random.Random(7)
    shards = [random_report(rng) for _ in range(3)]
    merged = merge_reports(shards)
    assert _keeps_order(merged, shards)
    everything = [n for n in NODEIDS if any(n in r["tests"] for r in shards)]
    whole = random_report(random.Random(1))
    whole_order = [n for n in NODEIDS if n in whole["tests"]]
    assert list(merge_reports([whole])["tests"]) == whole_order  # pytest's, not sorted
    assert whole_order != sorted(whole_order)
    assert set(merged["tests"]) == set(everything)
    shuffled = json.loads(json.dumps(whole))
    shuffled["run"]["run_id"] = "other"
    shuffled["tests"] = dict(reversed(list(shuffled["tests"].items())))
    assert sorted(merge_reports([whole, shuffled])["tests"]) == sorted(whole_order)


@pytest.mark.parametrize("seed", range(50))
def test_collected_only_never_overrides_ran(seed: int) -> None:
    rng = random.Random(seed)
    ran = random_report(rng)
    collected = random_report(rng)
    for nodeid, test in ran["tests"].items():
        if test["ran"]:
            # The same test, only collected elsewhere (a shard that deselected it).
            collected["tests"][nodeid] = {
                **test, "ran": False, "outcome": "not run", "services": [], "needs": [],
                "phases": {p: [] for p in TEST_PHASES}, "evidence": {}, "duration_s": 0.0,
                "worker": "gw9"}
    for inputs in ([ran, collected], [collected, ran]):
        merged = merge_reports(inputs)
        for nodeid, test in ran["tests"].items():
            if test["ran"]:
                out = merged["tests"][nodeid]
                assert out["ran"] and out["ran_in"] == [ran["run"]["run_id"]]
                assert out["outcome"] == test["outcome"]
                assert out["services"] == test["services"]
                assert out["worker"] == test["worker"]
                assert out["duration_s"] == test["duration_s"]


def test_runs_counted_once() -> None:
    rng = random.Random(7)
    a, b = random_report(rng), random_report(rng)
    a["run"].update(lost_events=2, exit_code=0)
    b["run"].update(lost_events=5, exit_code=1)
    merged = merge_reports([a, b, a, merge_reports([a, b])])
    run = merged["run"]
    assert sorted(run["runs"]) == sorted([a["run"]["run_id"], b["run"]["run_id"]])
    assert run["lost_events"] == 7
    assert run["exit_code"] == 1
    assert run["backend"] == "ebpf"
    assert run["runs"][b["run"]["run_id"]] == {
        "backend": "ebpf", "exit_code": 1, "lost_events": 5,
        "tests_ran": b["summary"]["tests_ran"], "command": b["run"]["command"],
        "config": None}


def test_a_test_incomplete_in_any_run_stays_incomplete() -> None:
    rng = random.Random(11)
    a, b = random_report(rng), random_report(rng)
    nodeid = next(iter(a["tests"]))
    a["tests"][nodeid].update(lost_events=4, incomplete=True)
    if nodeid in b["tests"]:  # lost in both runs: the larger count
        b["tests"][nodeid].update(lost_events=1, incomplete=True)
    for inputs in ([a, b], [b, a], [a, b, a]):
        merged = merge_reports(inputs)
        test = merged["tests"][nodeid]
        assert (test["lost_events"], test["incomplete"]) == (4, True)
        assert merge_reports([merged]) == merged
        assert all("incomplete" not in t for n, t in merged["tests"].items() if n != nodeid)


def test_worst_outcome_wins_and_first_is_earliest() -> None:
    rng = random.Random(3)
    a, b = random_report(rng), random_report(rng)
    nodeid = "tests/test_api.py::test_list"
    base = {"services": ["postgres"], "phases": {"setup": [], "call": ["postgres"],
                                                  "teardown": []},
            "ran": True, "duration_s": 0.1, "worker": None, "inherited": {},
            "declared": [], "baseline": [], "needs": ["postgres"]}
    ev = {"phases": ["call"], "connects": 1, "sends": 2, "failed_connects": 0,
          "background": False, "threads": ["MainThread"], "destinations": ["127.0.0.1:5432"],
          "fixtures": []}
    a["tests"][nodeid] = {**base, "outcome": "passed", "evidence": {"postgres": {
        **ev, "first": {"phase": "call", "offset_ms": 9.0}}}}
    b["tests"][nodeid] = {**base, "outcome": "failed", "evidence": {"postgres": {
        **ev, "phases": ["setup", "call"], "first": {"phase": "setup", "offset_ms": 50.0}}}}
    out = merge_reports([a, b])["tests"][nodeid]
    assert out["outcome"] == "failed"
    assert out["evidence"]["postgres"]["first"] == {"phase": "setup", "offset_ms": 50.0}
    assert out["evidence"]["postgres"]["phases"] == ["setup", "call"]
    assert list(out)[:6] == ["services", "phases", "outcome", "ran", "ran_in", "duration_s"]


def test_mixed_backends_are_an_error_unless_allowed() -> None:
    rng = random.Random(11)
    a, b = random_report(rng, "ebpf"), random_report(rng, "inprocess")
    with pytest.raises(MergeError, match="different backends: ebpf .*inprocess"):
        merge_reports([a, b])
    assert merge_reports([a, b], allow_mixed=True)["run"]["backend"] == "mixed"


def test_same_run_id_with_other_backend_is_an_error() -> None:
    rng = random.Random(12)
    a = random_report(rng)
    b = random_report(rng, "strace")
    b["run"]["run_id"] = a["run"]["run_id"]
    with pytest.raises(MergeError, match=a["run"]["run_id"]):
        merge_reports([a, b], allow_mixed=True)


def test_schema_mismatch_and_empty_input() -> None:
    report = random_report(random.Random(1))
    other = {**report, "schema": "svctrace-report/2"}
    with pytest.raises(MergeError, match="input 2 has schema 'svctrace-report/2'"):
        merge_reports([report, other])
    with pytest.raises(MergeError, match="nothing to merge"):
        merge_reports([])
    assert issubclass(MergeError, SvctraceError)


def test_reports_without_run_id_deduplicate_by_content() -> None:
    report = random_report(random.Random(2))
    del report["run"]["run_id"]
    once = merge_reports([report])
    assert len(once["run"]["runs"]) == 1
    assert _dump(merge_reports([report, json.loads(json.dumps(report))])) == _dump(once)


def test_merged_report_is_a_normal_report(tmp_path) -> None:
    merged = merge_reports(_inputs(5))
    path = write_report(merged, tmp_path / "merged.json")
    loaded = load_report(path)
    assert loaded == json.loads(json.dumps(merged))
    assert "backend ebpf" in format_summary(loaded)


# ---------------------------------------------------------------- CLI

def _write_inputs(tmp_path, seed: int = 4) -> list[str]:
    paths = []
    for index, report in enumerate(_inputs(seed)):
        paths.append(str(write_report(report, tmp_path / f"report-{index}.json")))
    return paths


def test_cli_merge(tmp_path) -> None:
    paths = _write_inputs(tmp_path)
    out = tmp_path / "out" / "merged.json"
    result = CliRunner().invoke(merge_command, ["-o", str(out), *paths, paths[0]])
    assert result.exit_code == 0, result.output
    merged = load_report(out)
    runs = len(merged["run"]["runs"])
    assert result.output.startswith(f"svctrace merge: {len(paths) + 1} inputs, {runs} runs, "
                                    f"{merged['summary']['tests_ran']} tests ran / "
                                    f"{merged['summary']['tests']} collected")
    assert merged == json.loads(json.dumps(merge_reports([load_report(p) for p in paths])))


@pytest.mark.parametrize("content, message", [
    (None, "cannot read report"),
    ("{not json", "is not valid JSON"),
    ('{"schema": "svctrace-report/0"}', "has schema 'svctrace-report/0'"),
])
def test_cli_merge_names_the_unreadable_input(tmp_path, content, message) -> None:
    good = _write_inputs(tmp_path)[0]
    bad = tmp_path / "shard-3.json"
    if content is not None:
        bad.write_text(content)
    result = CliRunner().invoke(merge_command, ["-o", str(tmp_path / "m.json"), good, str(bad)])
    assert result.exit_code == 1
    assert str(bad) in result.output and message in result.output
    assert not (tmp_path / "m.json").exists()


def test_cli_merge_mixed_backends(tmp_path) -> None:
    rng = random.Random(9)
    a = write_report(random_report(rng, "ebpf"), tmp_path / "a.json")
    b = write_report(random_report(rng, "strace"), tmp_path / "b.json")
    result = CliRunner().invoke(merge_command, ["-o", str(tmp_path / "m.json"), str(a), str(b)])
    assert result.exit_code == 1 and "--allow-mixed" in result.output
    result = CliRunner().invoke(merge_command, ["--allow-mixed", "-o", str(tmp_path / "m.json"),
                                                str(a), str(b)])
    assert result.exit_code == 0 and "backend mixed" in result.output


def test_cli_merge_needs_inputs() -> None:
    result = CliRunner().invoke(merge_command, ["-o", "x.json"])
    assert result.exit_code == 2 and "REPORT" in result.output
    assert "Examples" in CliRunner().invoke(merge_command, ["--help"]).output
