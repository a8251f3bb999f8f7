"""Attribution on hand-written event/marker streams: boundaries, subprocesses, crashes, workers."""
from __future__ import annotations

import errno

from svctrace.join.attribution import Attributor
from svctrace.config import Config
from svctrace.join.attribution import SETUP_HOLD_MAX_NS
from svctrace.events import (Destination, Event, FixtureMarker, FixtureWindows, Lost, Marker,
                             ProcessEvent, RunInfo, TestInfo)
from svctrace.report.build import build_report
from svctrace.join.evidence import MAX_KEPT, MORE_DESTINATIONS
from svctrace.join.services import ServiceMap

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


def test_gaps_between_a_tests_phases_belong_to_the_test_with_the_gap_named():
    records = windows_of(100, "t.py::a", 1000) + [
        ev(1015, REDIS, tid=101, comm="rdk:broker-1"),   # setup end -> call start
        ev(1035, PG), ev(1036, PG, kind="send")]         # call end -> teardown start
    report = attribute(records)
    test = report["tests"]["t.py::a"]
    assert test["phases"] == {"setup": ["redis"], "call": ["postgres"], "teardown": []}
    assert test["evidence"]["postgres"]["gaps"] == ["call->teardown"]
    assert test["evidence"]["redis"]["gaps"] == ["setup->call"]
    first = test["evidence"]["postgres"]["first"]
    assert (first["phase"], first["gap"]) == ("call", "call->teardown")
    assert report["unattributed"] == []


def test_gap_after_a_failed_setup_leads_to_teardown_even_before_its_marker_arrived():
    ms = 1_000_000
    att = Attributor(ServiceMap())
    for record in phase(100, "t.py::a", "setup", 1000 * ms, 1010 * ms, outcome="failed"):
        att.add(record)
    att.add(ev(1015 * ms, PG))
    att.flush(1016 * ms)  # teardown's start marker (1020 ms) is not known yet
    for record in phase(100, "t.py::a", "teardown", 1020 * ms, 1030 * ms):
        att.add(record)
    report = build_report(att.finish(), RunInfo("test"), Config())
    evidence = report["tests"]["t.py::a"]["evidence"]["postgres"]
    assert evidence["gaps"] == ["setup->teardown"]
    # in a gap, the offset counts from the end of the phase before it
    assert (evidence["first"]["phase"], evidence["first"]["offset_ms"]) == ("setup", 5.0)


def test_traffic_outside_tests_is_labelled_by_where_it_fell():
    records = ([Marker(0, 0, 100, None, "", "session", "start"),
                Marker(9000, 0, 100, None, "", "session", "end")]
               + phase(100, "", "collection", 10, 500)    # nested in the session window
               + windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [ev(-5, PG), ev(100, PG), ev(700, PG), ev(1500, PG), ev(2600, PG),
                  ev(9500, PG)])
    report = attribute(records)
    reasons = {(u["reason"], u["detail"]) for u in report["unattributed"]}
    assert reasons == {
        ("outside-session", "before pytest's session started"),
        ("collection", "while pytest collected tests"),
        ("session", "session start, before the first test"),
        ("between-tests", "after t.py::a (teardown)"),
        ("between-tests", "after t.py::b (teardown)"),
        ("outside-session", "after pytest's session ended"),
    }
    assert all(t["services"] == [] for t in report["tests"].values())


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
    assert report["fixtures"][fx]["tests"] == {"t.py::a": ["setup"]}  # where it ran
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


def test_function_fixture_windows_of_a_phase_come_in_one_record():
    fx_tmp, fx_db, fx_mod = "t.py::tmp", "t.py::db", "t.py::mod_res"
    records = (windows_of(100, "t.py::a", 1000)
               + [TestInfo("t.py::a", (fx_tmp, fx_db, fx_mod)),
                  ev(1002, PG), ev(1006, REDIS), ev(1040, KAFKA), ev(1042, KAFKA),
                  ev(1045, PG, kind="send"),
                  FixtureWindows(100, "setup", ((fx_db, 1001, 0, 1003, 0),
                                                (fx_tmp, 1005, 0, 1007, 0))),
                  FixtureWindows(100, "teardown", ((fx_tmp, 1041, 0, 1043, 0),)),
                  FixtureMarker(1046, 0, 100, fx_mod, "module", "teardown", "end")])
    report = attribute(records)
    test = report["tests"]["t.py::a"]
    assert test["evidence"]["postgres"]["fixtures"] == [fx_db]
    assert test["evidence"]["redis"]["fixtures"] == [fx_tmp]
    assert test["evidence"]["kafka"]["fixtures"] == [fx_tmp]  # 1040 is the test's own
    assert test["evidence"]["kafka"]["connects"] == 2 and "kafka" in test["services"]
    # the module fixture's teardown began where the function fixture's ended (1043), not
    # at the teardown's start: kafka at 1040 is not the module fixture's
    assert test["inherited"] == {"postgres": [fx_mod]}


def test_a_long_setup_holds_its_events_until_its_fixture_windows_arrive():
    att = Attributor(ServiceMap())
    for record in [Marker(1000, 0, 100, None, "t.py::a", "setup", "start"), ev(1001, PG)]:
        att.add(record)
    att.flush(5000)  # long past the event, but the setup is still open
    assert [e.mono_ns for e in att.pending] == [1001]
    att.add(FixtureWindows(100, "setup", (("t.py::db", 1000, 0, 1002, 0),)))
    att.add(Marker(1003, 0, 100, None, "t.py::a", "setup", "end", "passed"))
    att.flush(5000)
    assert not att.pending
    report = build_report(att.finish(), RunInfo("test"), Config())
    assert report["tests"]["t.py::a"]["evidence"]["postgres"]["fixtures"] == ["t.py::db"]
    # a setup that never ends (its worker died) holds nothing for ever
    att = Attributor(ServiceMap())
    att.add(Marker(1000, 0, 100, None, "t.py::b", "setup", "start"))
    att.add(ev(1001, PG))
    att.flush(1000 + SETUP_HOLD_MAX_NS + 10)
    assert not att.pending


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


def test_thread_born_in_a_finished_test_outlived_it():
    rdk = dict(pid=100, tid=101, comm="rdk:broker-1")
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [ProcessEvent("thread", 1025, None, 100, ppid=100, tid=101),
                  ev(1045, KAFKA, **rdk),            # still a's teardown: a's own
                  ev(2025, KAFKA, **rdk),            # during b: not b's
                  ev(1500, KAFKA, **rdk)])           # between tests: still a's leftover
    report = attribute(records)
    assert report["tests"]["t.py::a"]["services"] == ["kafka"]
    assert report["tests"]["t.py::a"]["evidence"]["kafka"]["first"]["born_in"] == "t.py::a"
    assert report["tests"]["t.py::b"]["services"] == []
    (entry,) = report["unattributed"]
    assert entry["reason"] == "outlived-test" and entry["services"] == ["kafka"]
    assert entry["detail"] == "thread started in t.py::a"
    assert entry["evidence"]["kafka"]["connects"] == 2


def test_threads_born_in_wider_fixtures_outside_tests_or_unknown_keep_the_window_rule():
    fx = "::kafka_session"
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [FixtureMarker(1002, 0, 100, fx, "session", "setup", "start"),
                  FixtureMarker(1008, 0, 100, fx, "session", "setup", "end"),
                  ProcessEvent("thread", 1005, None, 100, ppid=100, tid=101),  # in fixture
                  ProcessEvent("thread", 500, None, 100, ppid=100, tid=102),   # no test
                  ev(2021, KAFKA, tid=101), ev(2022, REDIS, tid=102),
                  ev(2023, PG, tid=103)])                                     # no record
    report = attribute(records)
    assert report["tests"]["t.py::b"]["services"] == ["kafka", "postgres", "redis"]
    assert report["unattributed"] == []


def test_a_reused_tid_is_a_new_thread():
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [ProcessEvent("thread", 1025, None, 100, ppid=100, tid=101),
                  ProcessEvent("thread", 2021, None, 100, ppid=100, tid=101),
                  ev(2025, KAFKA, tid=101)])
    report = attribute(records)
    assert report["tests"]["t.py::b"]["services"] == ["kafka"]
    assert report["tests"]["t.py::b"]["evidence"]["kafka"]["first"]["born_in"] == "t.py::b"


def test_a_reused_pid_belongs_to_its_new_parent_and_test():
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [ProcessEvent("fork", 1021, None, 200, 100),
                  ProcessEvent("exec", 1022, None, 200, 100, "psql", ("psql", "old")),
                  ev(1023, PG, pid=200),
                  ProcessEvent("exit", 1024, None, 200, 100),
                  ProcessEvent("fork", 2021, None, 200, 100, "python"),
                  ev(2025, REDIS, pid=200)])
    report = attribute(records)  # every event is attributed after all process records
    assert report["tests"]["t.py::a"]["services"] == ["postgres"]
    assert report["tests"]["t.py::b"]["services"] == ["redis"]
    assert report["tests"]["t.py::b"]["evidence"]["redis"]["first"]["cmdline"] == "python"
    assert report["unattributed"] == []


def test_an_exited_pid_seen_again_without_a_fork_is_not_its_old_self():
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [ProcessEvent("fork", 1021, None, 200, 100),
                  ProcessEvent("exit", 1024, None, 200, 100),
                  ev(2025, REDIS, pid=200)])
    report = attribute(records)
    assert report["tests"]["t.py::b"]["services"] == []
    assert [u["reason"] for u in report["unattributed"]] == ["not-under-pytest"]


def test_a_daemon_whose_parent_exited_still_belongs_to_the_test_that_started_it():
    records = windows_of(100, "t.py::a", 1000) + [
        ProcessEvent("fork", 1021, None, 200, 100),
        ProcessEvent("fork", 1022, None, 300, 200),
        ProcessEvent("exit", 1023, None, 200, 100),
        ev(1025, PG, pid=300)]
    assert attribute(records)["tests"]["t.py::a"]["services"] == ["postgres"]


def test_probes_and_failed_lookups_are_evidence_not_needs():
    uuidd = Destination("unix", "unix", "/run/uuidd/request")
    missing = Destination("unix", "unix", "/run/app/missing.sock")
    resolver = Destination("inet", "udp", "10.255.255.53", 53)
    metadata = Destination("inet", "other", "169.254.169.254", 80)  # eBPF: no handshake
    records = windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000) + [
        ev(1021, uuidd, result=-errno.ENOENT),
        ev(1022, missing, result=-errno.ENOENT),
        ev(1023, resolver, result=-errno.ENETUNREACH),
        ev(1024, metadata, result=-errno.ENETUNREACH),
        ev(1025, Destination("inet", "udp", "10.0.0.2", 53)),              # noise
        ev(2021, Destination("inet", "udp", "10.0.0.2", 53), kind="send", result=40),
        ev(2022, Destination("inet", "other", "10.0.0.9", 80), result=-errno.ECONNREFUSED),
        ev(2023, Destination("inet", "tcp", "10.0.0.9", 5432), result=-errno.ECONNREFUSED)]
    report = attribute(records)
    a, b = report["tests"]["t.py::a"], report["tests"]["t.py::b"]
    assert a["services"] == [] and a["needs"] == []
    assert sorted(a["failed_probes"]) == ["169.254.169.254:80", "dns",
                                          "unix:/run/app/missing.sock"]
    dns = a["failed_probes"]["dns"]
    assert dns["phases"] == ["call"] and dns["destinations"] == ["10.255.255.53:53"]
    assert dns["first"]["result"] == "enetunreach"
    # refused where nothing names it: a failed probe, no need; where a rule names it
    # (postgres by its port), a contact as before
    assert b["services"] == ["dns", "postgres"] and b["needs"] == b["services"]
    assert list(b["failed_probes"]) == ["10.0.0.9:80"]
    assert b["failed_probes"]["10.0.0.9:80"]["first"]["result"] == "refused"
    assert report["run"]["events"]["noise"] == 2
    assert report["run"]["events"]["failed_probes"] == 4


def test_a_thread_seen_while_its_session_fixture_still_runs_is_judged_again_later():
    fx = "::kafka_session"
    att = Attributor(ServiceMap())
    for record in (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000))[:1]:
        att.add(record)  # a's setup has started; the fixture is being set up
    att.add(FixtureMarker(1002, 0, 100, fx, "session", "setup", "start"))
    att.add(ProcessEvent("thread", 1003, None, 100, ppid=100, tid=101))
    att.add(ev(1004, KAFKA, tid=101))
    att.flush(1005)
    for record in ([FixtureMarker(1008, 0, 100, fx, "session", "setup", "end")]
                   + (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000))[1:]
                   + [ev(2025, KAFKA, tid=101)]):
        att.add(record)
    report = build_report(att.finish(), RunInfo("test"), Config())
    assert report["tests"]["t.py::b"]["services"] == ["kafka"]  # the fixture's thread
    assert report["unattributed"] == []


def test_evidence_counts_each_destination_and_tells_processes_from_threads():
    """A failed unix connect and a working TCP one are both named, with their
    counts; a child process is a process (pid, parent, command line), not a thread."""
    pg_unix = Destination("unix", "unix", "/var/run/postgresql/.s.PGSQL.5432")
    records = windows_of(100, "t.py::a", 1000) + [
        ProcessEvent("fork", 1021, None, 200, ppid=100),
        ProcessEvent("exec", 1021, None, 200, comm="rqworker", cmdline=("rqworker", "-q")),
        ev(1022, pg_unix, result=-errno.ENOENT),
        ev(1023, PG), ev(1024, PG, kind="send"), ev(1025, PG, kind="send", tid=101,
                                                   comm="bg"),
        ev(1026, PG, pid=200, comm="rqworker")]
    cfg = Config()
    report = attribute(records, cfg)
    evidence = report["tests"]["t.py::a"]["evidence"]["postgres"]
    assert evidence["by_destination"] == {
        "tcp:127.0.0.1:5432": {"connects": 2, "failed_connects": 0, "sends": 2, "errors": {}},
        "unix:/var/run/postgresql/.s.PGSQL.5432": {"connects": 1, "failed_connects": 1,
                                                   "sends": 0, "errors": {"enoent": 1}}}
    assert evidence["processes"]["100"]["role"] == "pytest"
    assert evidence["processes"]["100"]["threads"] == ["bg", "python"]
    assert evidence["processes"]["200"] == {"ppid": 100, "cmdline": "rqworker -q",
                                            "role": "subprocess", "threads": ["rqworker"]}


def test_ignored_traffic_is_counted_against_the_test_whose_window_it_fell_in():
    records = windows_of(100, "t.py::a", 1000) + [
        Event("listen", 1001, None, 100, 100, "python", Destination("inet", "tcp",
                                                                     "127.0.0.1", 8000)),
        ev(1022, Destination("inet", "tcp", "127.0.0.1", 8000)),
        # the server's reply goes to the client's ephemeral port: counted by its listener
        ev(1022, Destination("inet", "tcp", "127.0.0.1", 51234), kind="send", local=8000),
        ev(1023, NSCD), ev(1024, NSCD), ev(1200, NSCD)]   # the last one is after the test
    # more noise destinations than are kept: the rest counted apart, not as a label
    records += [ev(1030 + i, Destination("unix", "unix", f"/dev/log{i}")) for i in range(9)]
    report = attribute(records, Config(ignore=["unix:/dev/log*"]))
    noise = {"unix:/var/run/nscd/socket": 2,
             **{f"unix:/dev/log{i}": 1 for i in range(MAX_KEPT - 1)},
             MORE_DESTINATIONS: 9 - (MAX_KEPT - 1)}
    assert report["tests"]["t.py::a"]["ignored"] == {
        "noise": dict(sorted(noise.items())),
        "self_loopback": {"tcp:127.0.0.1:8000": 2}}


def test_a_pool_worker_born_in_an_earlier_test_works_for_the_running_test():
    """asgiref/asyncio/concurrent.futures: a worker started lazily in test a runs what test
    b submits later. The plugin names such threads ("pool" records); their traffic belongs
    to the test it happens in, while a plain thread born in a keeps the outlived rule."""
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + [ProcessEvent("thread", 1025, None, 100, ppid=100, tid=101),
                  ProcessEvent("thread", 1026, None, 100, ppid=100, tid=102),
                  ProcessEvent("pool", 2000, None, 100, comm="ThreadPoolExecutor-0_0",
                               tid=101),
                  ev(1027, PG, tid=101),            # a's own work in its pool thread
                  ev(2025, PG, tid=101),            # b's work in the same pool thread
                  ev(2026, KAFKA, tid=102)])        # a's leaked client thread during b
    report = attribute(records)
    assert report["tests"]["t.py::a"]["services"] == ["postgres"]
    assert report["tests"]["t.py::b"]["services"] == ["postgres"]
    first = report["tests"]["t.py::b"]["evidence"]["postgres"]["first"]
    assert first["tid"] == 101 and first["born_in"] == "t.py::a"
    (entry,) = report["unattributed"]
    assert entry["reason"] == "outlived-test" and entry["services"] == ["kafka"]


def test_a_pool_mark_for_an_older_thread_with_the_same_tid_does_not_count():
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + windows_of(100, "t.py::c", 3000)
               + [ProcessEvent("thread", 1025, None, 100, ppid=100, tid=101),
                  ProcessEvent("pool", 2000, None, 100, comm="ThreadPoolExecutor-0_0",
                               tid=101),
                  ProcessEvent("thread", 2025, None, 100, ppid=100, tid=101),  # reused tid
                  ev(3025, KAFKA, tid=101)])
    report = attribute(records)
    assert report["tests"]["t.py::c"]["services"] == []
    assert report["unattributed"][0]["detail"] == "thread started in t.py::b"


def test_outlived_and_between_tests_evidence_says_how_long_after_the_test_ended():
    ms = 1_000_000

    def test_windows(nodeid, t0):  # setup, call, teardown of 10 ms each, 10 ms apart
        return [m for i, name in enumerate(("setup", "call", "teardown"))
                for m in phase(100, nodeid, name, (t0 + 20 * i) * ms, (t0 + 20 * i + 10) * ms)]

    rdk = dict(pid=100, tid=101, comm="rdk:broker-1")
    records = (test_windows("t.py::a", 1000) + test_windows("t.py::b", 3000)
               + [ProcessEvent("thread", 1025 * ms, None, 100, ppid=100, tid=101),
                  ev(1250 * ms, REDIS),                 # a's teardown ended at 1050 ms
                  ev(3025 * ms, KAFKA, **rdk)])         # during b: a's thread
    report = attribute(records)
    after = {u["reason"]: next(iter(u["evidence"].values()))["first"]["after_ms"]
             for u in report["unattributed"]}
    assert after == {"between-tests": 200.0, "outlived-test": 1975.0}


def test_lost_records_are_charged_to_every_test_whose_windows_they_overlap():
    """A loss window may hide a contact of any test it overlaps (a subprocess's loss
    counts for its owner's tests); a loss outside every test counts for the run only."""
    records = (windows_of(100, "t.py::a", 1000) + windows_of(100, "t.py::b", 2000)
               + windows_of(100, "t.py::quiet", 3000) + windows_of(200, "t.py::other", 1000)
               + [ProcessEvent("fork", 1021, None, 150, ppid=100),
                  Lost(150, 1025, 1025, 3),     # a subprocess, inside a's call
                  Lost(100, 1045, 2005, 4),     # a's teardown to b's setup
                  Lost(100, 2012, 2015, 1),     # b's setup->call gap
                  Lost(100, 2600, 2700, 5),     # between b and quiet
                  Lost(999, 1000, 5000, 6)])    # a process outside pytest
    report = attribute(records)
    tests = report["tests"]
    assert (tests["t.py::a"]["lost_events"], tests["t.py::a"]["incomplete"]) == (7, True)
    assert (tests["t.py::b"]["lost_events"], tests["t.py::b"]["incomplete"]) == (5, True)
    for quiet in ("t.py::quiet", "t.py::other"):  # no key at all: as a run without loss
        assert "lost_events" not in tests[quiet] and "incomplete" not in tests[quiet]
    assert report["run"]["events"]["lost_in_tests"] == 3 + 4 + 1
    assert report["run"]["events"]["lost_outside_tests"] == 5 + 6


def test_a_loss_waits_for_the_watermark_like_events_and_a_run_without_loss_has_no_keys():
    att = Attributor(ServiceMap())
    for record in phase(100, "t.py::a", "call", 1000, 1010)[:1]:
        att.add(record)  # the call is still running
    att.add(Lost(100, 1005, 1006, 2))
    att.flush(1006)  # not older than the watermark yet
    assert att.lost_pending
    att.add(Marker(1010, 0, 100, None, "t.py::a", "call", "end", "passed"))
    att.flush(2000)
    assert not att.lost_pending and att.tests["t.py::a"].lost == 2
    att.add(Lost(100, 1008, 1009, 1))  # one that came late, after a flush
    att.finish()
    assert att.tests["t.py::a"].lost == 3
    quiet = attribute(windows_of(100, "t.py::a", 1000) + [ev(1025, PG)])
    assert "lost_in_tests" not in quiet["run"]["events"]
    assert "lost_outside_tests" not in quiet["run"]["events"]
    assert "lost_events" not in quiet["tests"]["t.py::a"]


def test_a_folded_connect_record_counts_as_many_connects_as_it_stands_for():
    """kernel_join folds connects: a tail record (count n, the last one's time) counts n
    attempts, and n failures when its result is one."""
    from dataclasses import replace
    records = windows_of(100, "t.py::a", 1000) + [
        ev(1021, PG), replace(ev(1025, PG), count=299),
        ev(1026, PG, result=-errno.ECONNREFUSED),
        replace(ev(1027, PG, result=-errno.ECONNREFUSED), count=19)]
    evidence = attribute(records)["tests"]["t.py::a"]["evidence"]["postgres"]
    assert (evidence["connects"], evidence["failed_connects"]) == (320, 20)
    assert evidence["by_destination"]["tcp:127.0.0.1:5432"] == {
        "connects": 320, "failed_connects": 20, "sends": 0, "errors": {"refused": 20}}


def test_only_the_runner_freezes_the_reports_objects_out_of_the_gcs_reach():
    """The runner leaves by os._exit soon after its report: its objects are frozen so the
    cyclic GC never walks them again. A user's pytest (standalone) may run on: nothing of
    it is frozen, and the GC is left as it was."""
    import gc
    from svctrace.join.collect import Collector
    before = gc.get_freeze_count()
    Collector(Config(), "mono").finish(RunInfo("test"), {})
    assert gc.isenabled() and gc.get_freeze_count() == before
    try:
        Collector(Config(), "mono", freeze_report=True).finish(RunInfo("test"), {})
        assert gc.isenabled() and gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
