"""Attribution on hand-written event/marker streams: boundaries, subprocesses, crashes, workers."""
from __future__ import annotations

from svctrace.attribution import Attributor
from svctrace.config import Config
from svctrace.events import (Destination, Event, FixtureMarker, Marker, ProcessEvent, RunInfo,
                             TestInfo)
from svctrace.report import build_report
from svctrace.services import ServiceMap

PG = Destination("inet", "tcp", "127.0.0.1", 5432)
REDIS = Destination("inet", "tcp", "127.0.0.1", 6379)
KAFKA = Destination("inet", "tcp", "127.0.0.1", 9092)
NSCD = Destination("unix", "unix", "/var/run/nscd/socket")


def ev(ts, dest, pid=100, tid=None, kind="connect", result=0, comm="python", local=None):
    return Event(kind, ts, None, pid, tid or pid, comm, dest, result, local)


def phase(pid, nodeid, name, start, end, worker=None, outcome="passed"):
    return [Marker(start, 0, pid, worker, nodeid, name, "start"),
            Marker(end, 0, pid, worker, nodeid, name, "end", outcome)]


def windows_of(pid, nodeid, t0, worker=None):
    """setup [t0, t0+10], call [t0+20, t0+30], teardown [t0+40, t0+50]."""
    return (phase(pid, nodeid, "setup", t0, t0 + 10, worker)
            + phase(pid, nodeid, "call", t0 + 20, t0 + 30, worker)
            + phase(pid, nodeid, "teardown", t0 + 40, t0 + 50, worker))


def attribute(records, cfg: Config | None = None):
    cfg = cfg or Config()
    att = Attributor(cfg.service_map())
    for record in records:
        att.add(record)
    return build_report(att.finish(), RunInfo("test"), cfg)


def test_events_go_to_the_phase_containing_them_boundaries_included():
    records = windows_of(100, "t.py::a", 1000) + [
        ev(1000, PG), ev(1030, REDIS), ev(1050, KAFKA, kind="send")]
    report = attribute(records)
    assert report["tests"]["t.py::a"]["phases"] == {
        "setup": ["postgres"], "call": ["redis"], "teardown": ["kafka"]}
    assert report["tests"]["t.py::a"]["services"] == ["kafka", "postgres", "redis"]
    assert report["unattributed"] == []


def test_gap_between_phases_and_between_tests_is_reported_not_charged():
    records = ([Marker(0, 0, 100, None, "", "session", "start")]
               + windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [ev(1500, PG), ev(1015, REDIS)])
    report = attribute(records)
    assert report["tests"]["t.py::a"]["services"] == []
    assert report["tests"]["t.py::b"]["services"] == []
    reasons = {(u["reason"], u["detail"]): u["services"] for u in report["unattributed"]}
    assert reasons == {("between-tests", "after t.py::a (teardown)"): ["postgres"],
                       ("between-tests", "after t.py::a (setup)"): ["redis"]}


def test_subprocess_and_threads_belong_to_the_owning_pytest_process():
    records = windows_of(100, "t.py::a", 1000) + [
        ProcessEvent("fork", 1021, None, 200, 100),
        ProcessEvent("fork", 1022, None, 300, 200),           # grandchild
        ev(1025, PG, pid=300),
        ev(1026, KAFKA, pid=100, tid=101, comm="rdk:broker-1"),
    ]
    report = attribute(records)
    test = report["tests"]["t.py::a"]
    assert test["phases"]["call"] == ["kafka", "postgres"]
    assert test["evidence"]["kafka"]["background"] is True
    assert test["evidence"]["kafka"]["first"]["thread"] == "rdk:broker-1"
    assert test["evidence"]["postgres"]["first"]["pid"] == 300


def test_process_outliving_its_test_is_not_charged_to_the_next_test():
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [ProcessEvent("fork", 1025, None, 200, 100), ev(2025, PG, pid=200)])
    report = attribute(records)
    assert report["tests"]["t.py::b"]["services"] == []
    assert report["unattributed"][0]["reason"] == "outlived-test"
    assert "t.py::a" in report["unattributed"][0]["detail"]


def test_xdist_workers_interleaved_each_to_its_own_test():
    records = (windows_of(11, "t.py::a", 1000, "gw0") + windows_of(12, "t.py::b", 1005, "gw1")
               + [ProcessEvent("fork", 1, None, 11, 10), ProcessEvent("fork", 2, None, 12, 10),
                  ev(1025, PG, pid=11), ev(1026, REDIS, pid=12)])
    report = attribute(records)
    assert report["tests"]["t.py::a"]["services"] == ["postgres"]
    assert report["tests"]["t.py::a"]["worker"] == "gw0"
    assert report["tests"]["t.py::b"]["services"] == ["redis"]


def test_worker_crash_mid_test_keeps_the_open_window_and_marks_interrupted():
    records = phase(11, "t.py::a", "setup", 1000, 1010) + [
        Marker(1020, 0, 11, "gw0", "t.py::a", "call", "start"), ev(1500, PG, pid=11)]
    report = attribute(records)
    assert report["tests"]["t.py::a"]["phases"]["call"] == ["postgres"]
    assert report["tests"]["t.py::a"]["outcome"] == "interrupted"


def test_noise_unknown_and_self_loopback():
    listen = Event("listen", 999, None, 100, 100, "rdk:mock",
                   Destination("inet", "tcp", "127.0.0.1", 40000), 0, 40000)
    mock = Destination("inet", "tcp", "127.0.0.1", 40000)
    other = Destination("inet", "tcp", "10.1.2.3", 8080)
    records = windows_of(100, "t.py::a", 1000) + [
        listen, ev(1021, NSCD), ev(1022, mock, tid=101),
        ev(1023, Destination("inet", "tcp", "127.0.0.1", 51000), kind="send", local=40000),
        ev(1024, other)]
    report = attribute(records)
    assert report["tests"]["t.py::a"]["services"] == ["tcp:10.1.2.3:8080"]
    assert report["run"]["events"]["noise"] == 1
    assert report["run"]["events"]["self_loopback"] == 2


def test_session_fixture_traffic_is_inherited_by_every_dependent_test():
    fx = "::pg_session"
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [TestInfo("t.py::a", (fx,)), TestInfo("t.py::b", (fx, "::other")),
                  TestInfo("t.py::c", ()),
                  FixtureMarker(1002, 0, 100, fx, "session", "setup", "start"),
                  ev(1003, PG),
                  FixtureMarker(1004, 0, 100, fx, "session", "setup", "end")])
    report = attribute(records)
    a, b = report["tests"]["t.py::a"], report["tests"]["t.py::b"]
    assert a["services"] == [] and a["inherited"] == {"postgres": [fx]}
    assert report["fixtures"][fx]["evidence"]["postgres"]["first"]["test"] == "t.py::a"
    assert b["services"] == [] and b["inherited"] == {"postgres": [fx]}
    assert b["needs"] == ["postgres"]
    assert report["tests"]["t.py::c"]["ran"] is False
    assert report["tests"]["t.py::c"]["outcome"] == "not run"


def test_teardown_fixture_windows_follow_each_other():
    fx_fn, fx_mod = "t.py::flush", "t.py::mod_res"
    records = (windows_of(100, "t.py::a", 1000)
               + [TestInfo("t.py::a", (fx_fn, fx_mod)),
                  ev(1041, REDIS),
                  FixtureMarker(1042, 0, 100, fx_fn, "function", "teardown", "end"),
                  ev(1043, KAFKA),
                  FixtureMarker(1044, 0, 100, fx_mod, "module", "teardown", "end")])
    report = attribute(records)
    test = report["tests"]["t.py::a"]
    assert test["evidence"]["redis"]["fixtures"] == [fx_fn]
    assert test["services"] == ["redis"]  # the module fixture's kafka is not this test's own
    assert test["inherited"] == {"kafka": [fx_mod]}


def test_declared_baseline_and_needs():
    cfg = Config(baseline=["redis"],
                 declare={"markers": {"kafka": ["kafka"]}, "paths": {"t_db/*": ["postgres"]}})
    records = windows_of(100, "t_db/x.py::a", 1000) + [
        TestInfo("t_db/x.py::a", (), ("kafka",), "t_db/x.py"), ev(1021, REDIS)]
    report = attribute(records, cfg)
    test = report["tests"]["t_db/x.py::a"]
    assert test["declared"] == ["kafka", "postgres"]
    assert test["services"] == ["redis"]
    assert test["baseline"] == ["redis"]
    assert test["needs"] == ["kafka", "postgres"]


def test_incremental_flush_equals_batch():
    records = windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000) + [
        ev(1005, PG), ev(2025, REDIS), ev(1500, KAFKA)]
    batch = attribute(records)
    att = Attributor(ServiceMap())
    for index, record in enumerate(records):
        att.add(record)
        if index % 3 == 0:
            att.flush(900)  # nothing is old enough yet
    att.flush(1600)
    # 2025 is not old enough; 1500 arrived after it and waits behind it (harmless)
    assert [e.mono_ns for e in att.pending] == [2025, 1500]
    streamed = build_report(att.finish(), RunInfo("test"), Config())
    assert streamed["tests"] == batch["tests"]
    assert streamed["unattributed"] == batch["unattributed"]


def test_incidental_service_flagged_as_baseline_candidate():
    fx = "conftest.py::flush_redis"
    records = []
    for i in range(10):
        t0 = 1000 * (i + 1)
        records += windows_of(100, f"t.py::t{i}", t0)
        records += [ev(t0 + 41, REDIS),
                    FixtureMarker(t0 + 42, 0, 100, fx, "function", "teardown", "end")]
    records.append(ev(1021, PG))
    report = attribute(records)
    incidental = report["summary"]["incidental"]
    assert {"service": "redis", "via": f"fixture {fx}", "share": 1.0, "tests": 10} in incidental
    assert all(item["service"] != "postgres" for item in incidental)
