"""The report views on small hand-made reports: explain, summary, html (pure)."""
from __future__ import annotations

import re

import pytest

from svctrace.report.model import ReportError
from svctrace.views import explain


def contact(phases=("call",), **kw):
    ev = {"phases": list(phases), "connects": 0, "sends": 0, "failed_connects": 0,
          "background": False, "threads": [], "destinations": [], "fixtures": [], "gaps": [],
          "first": None, "by_destination": {}, "processes": {}}
    ev.update(kw)
    return ev


def first(**kw):
    base = {"phase": "call", "gap": None, "offset_ms": 4.2, "pid": 10, "tid": 10,
            "thread": "pytest", "background": False, "born_in": None, "cmdline": "pytest",
            "destination": "tcp:127.0.0.1:5432", "kind": "connect", "result": "ok"}
    base.update(kw)
    return base


def test_entry(**kw):
    entry = {"services": [], "phases": {"setup": [], "call": [], "teardown": []},
             "outcome": "passed", "ran": True, "duration_s": 0.5, "worker": None,
             "evidence": {}, "inherited": {}, "declared": [], "baseline": [], "needs": [],
             "failed_probes": {}, "ignored": {}}
    entry.update(kw)
    return entry


test_entry.__test__ = False


def report(tests, unattributed=(), fixtures=None):
    return {"run": {"backend": "ebpf", "lost_events": 0, "blind_spots": []}, "tests": tests,
            "unattributed": list(unattributed), "fixtures": fixtures or {}}


PG_TWO_WAYS = contact(
    connects=2, sends=3, failed_connects=1, threads=["pytest", "rqworker"],
    destinations=["tcp:127.0.0.1:5432", "unix:/var/run/postgresql/.s.PGSQL.5432"],
    by_destination={
        "tcp:127.0.0.1:5432": {"connects": 1, "failed_connects": 0, "sends": 3, "errors": {}},
        "unix:/var/run/postgresql/.s.PGSQL.5432": {"connects": 1, "failed_connects": 1,
                                                   "sends": 0, "errors": {"enoent": 1}}},
    processes={"10": {"ppid": 1, "cmdline": "python -m pytest -q", "role": "pytest",
                      "threads": ["pytest"]},
               "22": {"ppid": 10, "cmdline": "rqworker " + "--queue default " * 20,
                      "role": "subprocess", "threads": ["rqworker"]}},
    first=first(destination="unix:/var/run/postgresql/.s.PGSQL.5432", result="enoent"))


def test_explain_shows_every_destination_and_tells_processes_from_threads():
    rep = report({"t.py::a": test_entry(services=["postgres"], needs=["postgres"],
                                        evidence={"postgres": PG_TWO_WAYS})})
    lines = explain.explain_text(rep, ["t.py::a"]).splitlines()
    assert "  postgres: 2 connects (1 failed: enoent) and 3 sends in call" in lines
    assert "      to tcp:127.0.0.1:5432: 1 connect, 3 sends" in lines
    assert "      to unix:/var/run/postgresql/.s.PGSQL.5432: 1 connect enoent" in lines
    assert ("      from pid 10 (the test's pytest process), threads pytest: "
            "python -m pytest -q") in lines
    child = next(l for l in lines if l.startswith("      from pid 22 "))
    assert child.startswith("      from pid 22 (a subprocess, parent pid 10), threads rqworker:")
    shown = child.split("threads rqworker: ", 1)[1]
    full = PG_TWO_WAYS["processes"]["22"]["cmdline"]
    assert shown.endswith(" …") and full.startswith(shown[:-2])
    assert full[len(shown) - 2] == " "  # cut between words, never inside one


def test_cut_keeps_words_whole():
    assert explain.cut("a b c", 10) == "a b c"
    assert explain.cut("python -m pytest -p no:cacheprovider", 20) == "python -m pytest -p …"
    assert explain.cut("x" * 30, 10) == "x" * 10 + " …"


def test_an_event_in_a_gap_counts_from_the_end_of_the_phase_before_it():
    assert explain.when_text(first(gap="call->teardown", offset_ms=3.4)) == \
        "3 ms after call ended (before teardown)"
    assert explain.when_text(first()) == "4 ms into call"


def test_failed_probes_fixture_teardown_and_outlived_traffic_are_pointed_to():
    probe = contact(connects=1, failed_connects=1, destinations=["unix:/run/app.sock"],
                    first=first(destination="unix:/run/app.sock", result="enoent"))
    rep = report(
        {"t.py::a": test_entry(failed_probes={"unix:/run/app.sock": probe}),
         "t.py::b": test_entry()},
        unattributed=[{"reason": "outlived-test", "detail": "thread started in t.py::a",
                       "services": ["redis"], "failed_probes": {},
                       "evidence": {"redis": contact(phases=(), sends=2)}},
                      {"reason": "outlived-test", "detail": "thread started in t.py::ab",
                       "services": ["kafka"], "failed_probes": {},
                       "evidence": {"kafka": contact(phases=(), sends=2)}}],
        fixtures={"::pg": {"scope": "session", "services": ["postgres"],
                           "tests": {"t.py::b": ["teardown"]},
                           "evidence": {"postgres": contact(phases=(), sends=1, first=first(
                               kind="send", phase="setup", test="t.py::a"))}}})
    a = explain.explain_text(rep, ["t.py::a"])
    assert "failed probes (attempts that reached nothing; not needs):" in a
    assert "    unix:/run/app.sock: 1 connect enoent" in a
    assert "unattributed 'outlived-test' (thread started in t.py::a)" in a
    assert "kafka" not in a  # t.py::ab's thread is not t.py::a's
    assert a.endswith("see failed probes and traffic reported elsewhere above")
    b = explain.explain_text(rep, ["t.py::b"])
    assert ("session-scoped fixture ::pg ran in this test's teardown: postgres (this test "
            "does not use it: charged to the fixture, not in its needs); its traffic over "
            "every test it ran in:") in b
    # the fixture's first contact was in another test: named, not mistaken for b's setup
    assert "4 ms into setup of t.py::a" in b and "into setup\n" not in b + "\n"


def test_selection_by_prefix_file_folder_and_keyword():
    rep = report({n: test_entry() for n in (
        "tests/a/test_x.py::test_kafka_one", "tests/a/test_x.py::T::test_mock",
        "tests/b/test_y.py::test_kafka_mock", "tests/b/test_y.py::test_pg")})
    assert explain.select_tests(rep, ["tests/a/test_x.py"]) == [
        "tests/a/test_x.py::test_kafka_one", "tests/a/test_x.py::T::test_mock"]
    assert explain.select_tests(rep, ["tests/b/"]) == [
        "tests/b/test_y.py::test_kafka_mock", "tests/b/test_y.py::test_pg"]
    assert explain.select_tests(rep, keyword="kafka and not mock") == [
        "tests/a/test_x.py::test_kafka_one"]
    assert explain.select_tests(rep, keyword="(T or pg) and not kafka") == [
        "tests/a/test_x.py::T::test_mock", "tests/b/test_y.py::test_pg"]
    assert explain.select_tests(rep, ["tests/b"], keyword="pg") == ["tests/b/test_y.py::test_pg"]
    for bad in ("kafka and", "(kafka", "or kafka", "kafka pg"):
        with pytest.raises(ReportError, match="-k"):
            explain.select_tests(rep, keyword=bad)
    with pytest.raises(ReportError, match="not in the report"):
        explain.select_tests(rep, ["tests/c"])


def summary_report(tests, blind_spots=("a", "b", "c", "d", "e", "f")):
    from svctrace.join.analysis import summarize
    rep = report(tests)
    rep["run"].update({"blind_spots": list(blind_spots), "notes": [], "events": {}})
    rep["summary"] = summarize(rep, [])
    return rep


def test_summary_is_short_and_says_what_a_reader_cannot_guess():
    from svctrace.views.summary import format_summary
    tests = {f"t.py::obs{i}": test_entry(services=["redis"], needs=["redis"])
             for i in range(3)}
    tests["t.py::inh"] = test_entry(inherited={"redis": ["::r"]}, needs=["redis"])
    tests["t.py::dns"] = test_entry(services=["dns"], needs=["dns"], failed_probes={
        "tcp:10.255.255.53:53": contact()})
    for i in range(10):  # ten distinct sets: more than the default shows
        tests[f"t.py::s{i}"] = test_entry(needs=[f"svc{i}"], declared=[f"svc{i}"])
    rep = summary_report(tests)
    text = format_summary(rep, "r.json")
    lines = text.splitlines()
    assert lines[0] == "svctrace: backend ebpf, 15 tests ran, 0 lost events, report r.json"
    assert "redis 4 (1 inherited from wider-scoped fixtures)" in lines[1]
    assert "dns 1 [name lookups on port 53]" in lines[1]
    assert "svc0 1 (1 declared)" in lines[1]
    assert ("  failed probes (attempts that reached nothing; not needs): "
            "tcp:10.255.255.53:53 in 1 test") in lines
    assert "         4  in 4 more sets (-v lists them)" in lines
    assert not any("blind spot:" in l for l in lines)
    assert lines[-1] == ("  6 blind spots of the ebpf backend: listed by `svctrace summary -v` "
                         "and in the report's run.blind_spots")
    verbose = format_summary(rep, "r.json", verbose=True).splitlines()
    assert [l for l in verbose if l.startswith("  blind spot: ")] == [
        f"  blind spot: {s}" for s in "abcdef"]
    assert not any("more sets" in l for l in verbose)


def test_summary_markdown_tables_escape_pipes():
    from svctrace.views.summary import markdown_summary
    rep = summary_report({"t.py::a": test_entry(services=["a|b"], needs=["a|b"])})
    text = markdown_summary(rep)
    assert "| a\\|b | 1 | 1 | 0 | 0 |" in text
    assert "<details><summary>6 blind spots of the ebpf backend</summary>" in text


def test_inherited_and_observed_do_not_contradict_and_outlived_says_when():
    rep = report(
        {"t.py::a": test_entry(services=["redis"], needs=["redis"],
                               inherited={"redis": ["::redis_session"]},
                               evidence={"redis": contact(connects=1, first=first(
                                   destination="tcp:127.0.0.1:6379"))})},
        unattributed=[{"reason": "outlived-test", "detail": "process started in t.py::a",
                       "services": ["redis"], "failed_probes": {},
                       "evidence": {"redis": contact(phases=(), sends=1, first=first(
                           phase=None, offset_ms=None, after_ms=312.4, kind="send",
                           destination="tcp:127.0.0.1:6379"))}}])
    text = explain.explain_text(rep, ["t.py::a"])
    assert "redis (also inherited): set up or torn down by ::redis_session" in text
    assert "not observed in this test" not in text
    assert "312 ms after the test ended" in text


def test_counts_read_as_counted_nouns():
    """"1 tests" nowhere: every count in the summaries agrees with its noun."""
    from svctrace.views.summary import format_summary, markdown_summary
    rep = summary_report({"t.py::a": test_entry(services=["redis"], needs=["redis"],
                                                failed_probes={"unix:/x": contact()})})
    rep["run"]["lost_events"] = 1
    rep["run"]["blind_spots"] = ["a"]
    text = format_summary(rep) + "\n" + markdown_summary(rep)
    assert "svctrace: backend ebpf, 1 test ran, 1 lost event" in text
    assert "WARNING: 1 event was lost" in text and "**Warning:** 1 event was lost" in text
    assert "unix:/x in 1 test" in text and "`unix:/x` in 1 test." in text
    assert "1 blind spot of the ebpf backend" in text
    assert "1 test ran of 1 collected, **1 lost event**" in text
    assert not re.search(r"\b1 (tests|events|blind spots|sets|jobs)\b", text), text


def test_ignored_destinations_beyond_those_kept_read_as_a_count_not_a_label():
    from svctrace.join.evidence import MORE_DESTINATIONS
    rep = report({"t.py::a": test_entry(ignored={"self_loopback": {
        "tcp:127.0.0.1:8000": 4, MORE_DESTINATIONS: 5}})})
    line = next(l for l in explain.explain_text(rep, ["t.py::a"]).splitlines()
                if l.startswith("  ignored "))
    assert line.endswith(": tcp:127.0.0.1:8000 4, 5 more to other destinations"), line
    assert "ignored 9 events to and from its own listeners over loopback" in line
    assert "other 5" not in line


def test_incomplete_tests_are_named_with_why_in_summary_explain_and_html():
    from svctrace.views.explain import explain_one
    from svctrace.views.html import build_page
    from svctrace.views.summary import format_summary, markdown_summary
    rep = summary_report({"t.py::lossy": test_entry(lost_events=3, incomplete=True),
                          "t.py::quiet": test_entry()})
    rep["run"]["lost_events"] = 3
    text = format_summary(rep)
    assert ("INCOMPLETE: records were lost while 1 test ran (t.py::lossy): services it needs "
            "may be missing, so `svctrace tiers` runs it in the most complete tier") in text
    assert "t.py::quiet" not in text
    assert "records were lost while 1 test ran (t.py::lossy)" in markdown_summary(rep)
    assert "INCOMPLETE: 3 records of this test's processes were lost" \
        in explain_one(rep, "t.py::lossy")
    assert "INCOMPLETE" not in explain_one(rep, "t.py::quiet")
    assert "3 records of this test" in build_page(rep)
    # losses no window kept: said for the run, whichever test they hit
    rep["run"]["backend_stats"] = {"lost_unkept": 1}
    assert "1 lost record could not be told to a test" in format_summary(rep)
    quiet = summary_report({"t.py::quiet": test_entry()})
    assert "INCOMPLETE" not in format_summary(quiet)
