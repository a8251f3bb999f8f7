"""report.model: the one way in and out of the report and plan JSON, byte for byte."""
from __future__ import annotations

import dataclasses
import json
import random

import pytest

from svctrace.config import Tier
from svctrace.plan.tiers import plan_tiers
from svctrace.report.files import read_plan, read_report, write_plan, write_report
from svctrace.report.merge import merge_reports
from svctrace.report.model import (PLAN_SCHEMA, Plan, PlanError, Report, ReportError,
                                   TestRecord, as_report, covering_tier)
from tests.support import e2e
from tests.test_merge import _inputs, random_report

TIERS = [Tier("db", ("postgres",), 20), Tier("events", ("postgres", "kafka"), 120),
         Tier("full", ("postgres", "kafka", "clickhouse", "127.0.0.1:8080"), 280)]


def _written(report: dict) -> str:
    """The bytes `svctrace run` wrote for a report before the model existed."""
    return json.dumps(report, separators=(",", ":")) + "\n"


@pytest.mark.parametrize("seed", range(8))
def test_built_and_merged_reports_round_trip_byte_for_byte(seed):
    inputs = _inputs(seed)
    for report in inputs + [merge_reports(inputs), merge_reports(inputs[:1])]:
        text = _written(report)
        model = Report.load(text)
        assert model.dump() == text
        assert model.to_dict() == report


def test_a_real_run_report_round_trips_and_reads_as_typed_records(tmp_path):
    code = ("import os, socket\n"
            "def test_talks():\n"
            "    socket.create_connection(('127.0.0.1', int(os.environ['SERVICE_PORT']))).close()\n"
            "def test_quiet():\n"
            "    pass\n")
    report, _ = e2e.run_one_file(tmp_path, "test_one.py", code, "mysvc",
                                 ["--backend", "inprocess"])
    text = (tmp_path / "r.json").read_text()
    model = read_report(tmp_path / "r.json")
    assert model.dump() == text
    assert model.to_dict() == report
    talks = model.tests["test_one.py::test_talks"]
    assert isinstance(talks, TestRecord)
    assert talks.ran and talks.needs == ["mysvc"] and talks.phases["call"] == ["mysvc"]
    assert model.tests["test_one.py::test_quiet"].needs == []
    assert model.run.backend == "inprocess" and model.run.notes == report["run"].get("notes", [])
    # What the model writes is what it read.
    again = write_report(model, tmp_path / "again.json")
    assert again.read_text() == text


def test_a_built_test_record_has_the_keys_of_build_report_in_its_field_order():
    report = random_report(random.Random(3))
    built = next(iter(report["tests"].values()))
    fields = [f.name for f in dataclasses.fields(TestRecord) if f.name not in ("extra", "keys")]
    later = ("ran_in", "needs_proof")  # written by merge and by prove, not by build
    lossy = ("lost_events", "incomplete")  # written by build only when records were lost
    assert list(built) == [f for f in fields if f not in later + lossy]
    # Built in code (not loaded): every field, in declaration order.
    out = TestRecord(**built).to_dict()
    assert list(out) == fields
    assert {k: v for k, v in out.items() if k not in later + lossy} == built


def test_unknown_keys_of_a_newer_svctrace_survive_at_every_level():
    report = random_report(random.Random(1))
    nodeid = next(iter(report["tests"]))
    report["future"] = {"a": 1}
    report["run"]["future_run"] = [1, 2]
    report["tests"][nodeid]["future_test"] = "x"
    fid = next(iter(report["fixtures"]), None)
    if fid is not None:
        report["fixtures"][fid]["future_fixture"] = True
    text = _written(report)
    model = Report.load(text)
    assert model.extra == {"future": {"a": 1}}
    assert model.run.extra["future_run"] == [1, 2]
    assert model.tests[nodeid].extra == {"future_test": "x"}
    assert model.dump() == text
    # A record changed in code keeps its unknown keys and its key order.
    changed = dataclasses.replace(model.tests[nodeid], needs=["zzz"])
    out = changed.to_dict()
    assert out["future_test"] == "x" and out["needs"] == ["zzz"]
    assert list(out) == list(report["tests"][nodeid])


def test_an_old_report_without_newer_fields_dumps_without_them():
    text = _written({"schema": "svctrace-report/1", "run": {"backend": "strace"},
                     "tests": {"t.py::a": {"services": [], "ran": True}}})
    model = Report.load(text)
    assert model.tests["t.py::a"].needs == [] and model.tests["t.py::a"].denied == []
    assert model.dump() == text


@pytest.mark.parametrize("text, message", [
    ('{"schema": "svctrace-report/2", "tests": {}}',
     "report has schema 'svctrace-report/2'; this svctrace reads 'svctrace-report/1'"),
    ('{"tests": {}}', "report has schema None"),
    ('[1, 2]', "report has schema None"),
    ('{"schema": "svctrace-report/1", "tests": []}', "its 'tests' is not a JSON object"),
    ('{"schema": "svctrace-report/1", "unattributed": {}}',
     "its 'unattributed' is not a JSON array"),
    ('{"schema": "svctrace-report/1",', "report is not valid JSON"),
])
def test_a_report_of_another_schema_or_shape_is_one_clear_error(text, message):
    with pytest.raises(ReportError) as err:
        Report.load(text)
    assert message in str(err.value)


def test_reading_a_report_of_another_schema_names_the_file(tmp_path):
    path = tmp_path / "old.json"
    path.write_text('{"schema": "svctrace-report/0"}')
    with pytest.raises(ReportError, match=r"report .*old.json has schema 'svctrace-report/0'"):
        read_report(path)


def test_in_memory_reports_without_a_schema_are_taken_but_another_schema_is_not():
    assert as_report({"tests": {"t.py::a": {"needs": ["x"]}}}).tests["t.py::a"].needs == ["x"]
    with pytest.raises(ReportError, match="svctrace-report/9"):
        as_report({"schema": "svctrace-report/9", "tests": {}})


def test_a_plan_round_trips_in_the_bytes_tiers_always_wrote(tmp_path):
    report = merge_reports(_inputs(2))
    for granularity in ("test", "class", "file"):
        plan = plan_tiers(report, TIERS, granularity)
        before = json.dumps(plan, indent=1) + "\n"   # `tiers --plan-out` before the model
        model = Plan.from_dict(plan)
        assert model.dump() == before
        path = write_plan(model, tmp_path / f"{granularity}.json")
        assert path.read_text() == before
        assert read_plan(path).dump() == before


def test_a_plan_of_another_schema_or_inconsistent_is_one_clear_error():
    with pytest.raises(PlanError, match="has schema 'svctrace-report/1'.*tiers --plan-out"):
        Plan.load('{"schema": "svctrace-report/1"}')
    with pytest.raises(PlanError, match="lacks granularity"):
        Plan.load(json.dumps({"schema": PLAN_SCHEMA, "tiers": {}}))
    plan = plan_tiers(merge_reports(_inputs(2)), TIERS)
    with pytest.raises(PlanError, match="inconsistent"):
        Plan.from_dict({**plan, "fallback": "nope"})
    with pytest.raises(PlanError, match="tier 'db' lacks its services or tests list"):
        Plan.from_dict({**plan, "tiers": {**plan["tiers"], "db": {"services": ["postgres"]}}})


def test_the_covering_tier_is_the_cheapest_whose_services_cover_the_needs():
    plan = Plan.from_dict(plan_tiers(merge_reports(_inputs(2)), TIERS))
    assert plan.order == ["db", "events", "full"]
    assert plan.covering_tier([]) == "db"
    assert plan.covering_tier(["postgres"]) == "db"
    assert plan.covering_tier(["kafka"]) == "events"
    assert plan.covering_tier(["clickhouse", "kafka"]) == "full"
    assert plan.covering_tier(["mysql"]) is None
    assert covering_tier([("a", ["x"]), ("b", ["x", "y"])], {"y"}) == "b"
    # plan_tiers places each test that ran by the same rule
    report = as_report(merge_reports(_inputs(2)))
    for nodeid, test in report.tests.items():
        if test.ran and plan.covering_tier(test.needs) is not None:
            assert plan.assignments[nodeid] == plan.covering_tier(test.needs)
