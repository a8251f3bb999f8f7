"""`svctrace html`: the page is self-contained, builds fast for 30,000 tests, and works in a
real headless Chromium from file:// (filters, evidence, plan, comparison, no console errors)."""
from __future__ import annotations

import copy
import json
import re
import subprocess
import time

import pytest

from svctrace.join.analysis import summarize
from svctrace.config import Tier
from svctrace.plan.tiers import plan_tiers
from svctrace.views.html import build_page
from tests.support import e2e
from tests.support.backends import BEST
from tests.support.browser import Browser, chromium, screenshot

needs_chromium = pytest.mark.skipif(chromium() is None, reason="chromium is not installed "
                                    "(scripts/setup.sh installs it where Debian has it)")
SERVICES = ["postgres", "redis", "kafka", "clickhouse", "snuba", "memcached", "dns"]


def synthetic(count: int = 30_000) -> dict:
    """A report of `count` tests in files of 50 and classes of 10, with evidence like a real
    suite's (most need postgres, some kafka, a few fail)."""
    tests = {}
    for i in range(count):
        nodeid = f"tests/pkg{i // 5000}/test_m{i // 50}.py::TestC{i // 10}::test_{i}[p{i % 3}]"
        svcs = ["postgres"] + (["kafka", "clickhouse"] if i % 7 == 0 else []) \
            + (["redis"] if i % 3 == 0 else [])
        evidence = {s: {"phases": ["call"], "connects": 1, "sends": 4, "failed_connects": 0,
                        "background": False, "threads": ["python"],
                        "destinations": [f"tcp:10.0.0.{n}:5432"], "fixtures": [], "gaps": [],
                        "first": {"phase": "call", "gap": None, "offset_ms": 3.0,
                                  "pid": 100, "tid": 100, "thread": "python",
                                  "background": False, "born_in": None,
                                  "cmdline": "python -m pytest -n 4 tests/",
                                  "destination": f"tcp:10.0.0.{n}:5432", "kind": "connect",
                                  "result": "ok"},
                        "by_destination": {f"tcp:10.0.0.{n}:5432": {
                            "connects": 1, "failed_connects": 0, "sends": 4, "errors": {}}},
                        "processes": {"100": {"ppid": 1, "cmdline": "python -m pytest",
                                              "role": "pytest", "threads": ["python"]}}}
                    for n, s in enumerate(svcs)}
        tests[nodeid] = {"services": svcs, "phases": {"setup": [], "call": svcs,
                                                       "teardown": []},
                         "outcome": "failed" if i % 101 == 0 else "passed", "ran": True,
                         "duration_s": 0.01 * (i % 17), "worker": f"gw{i % 4}",
                         "evidence": evidence, "inherited": {}, "declared": [],
                         "baseline": [], "needs": svcs, "failed_probes": {}, "ignored": {}}
    report = {"schema": "svctrace-report/1",
              "run": {"backend": "ebpf", "blind_spots": ["x"], "command": ["pytest"],
                      "exit_code": 0, "lost_events": 0, "events": {}, "notes": []},
              "tests": tests, "unattributed": [], "fixtures": {}}
    report["summary"] = summarize(report, [])
    return report


def test_page_is_self_contained_and_escapes_what_could_end_its_script():
    report = synthetic(20)
    nodeid = next(iter(report["tests"]))
    report["tests"]["t.py::test_x[</script><b>]"] = report["tests"].pop(nodeid)
    page = build_page(report)
    assert page.count("</script>") == 2  # the data block's and the script's own, no more
    assert "<\\/script><b>" in page
    # nothing fetched: no external scripts, styles, images or fonts
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "@import" not in page and "url(" not in page


def test_a_30000_test_report_builds_quickly_and_stays_a_reasonable_size(tmp_path):
    report = synthetic()
    started = time.process_time()
    page = build_page(report)
    elapsed = time.process_time() - started
    assert elapsed < 30, f"{elapsed:.1f} s of CPU to build the page"
    size = len(page.encode())
    # the report itself (compact JSON) is the yardstick: the page is not much bigger
    report_size = len(json.dumps(report, separators=(",", ":")))
    assert size < 1.2 * report_size, (size, report_size)
    (tmp_path / "index.html").write_text(page)


@needs_chromium
def test_a_30000_test_page_loads_fast_and_draws_only_the_rows_in_view(tmp_path):
    (tmp_path / "index.html").write_text(build_page(synthetic()))
    browser = Browser()
    try:
        took = browser.open((tmp_path / "index.html").as_uri())
        assert browser.js("document.body.dataset.ready") == "1"
        assert took < 20, f"{took:.1f} s to load"
        assert browser.js("document.getElementById('count').textContent") == \
            "30000 of 30000 tests"
        assert browser.js("document.querySelectorAll('#matrix .row').length") < 200  # lazy
        # scroll to the end: the last test is drawn
        browser.js("var m = document.getElementById('matrix'); m.scrollTop = m.scrollHeight;"
                   "m.dispatchEvent(new Event('scroll')); "
                   "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        names = browser.js("[...document.querySelectorAll('#matrix .row.test .name')]"
                           ".map(e => e.textContent)")
        assert "test_29999[p2]" in names
        assert browser.errors == []
    finally:
        browser.close()


@pytest.fixture(scope="module")
def sample_page(tmp_path_factory, sample_env):
    """The HTML report of a real traced run of the sample suite, with a tiers plan and an
    older report to compare with."""
    suite = e2e.copy_suite(tmp_path_factory.mktemp("html"), sample_env)
    report, proc = e2e.run_svctrace(BEST, suite, sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = plan_tiers(report, [Tier("db", ("postgres", "redis", "http-api",
                                           "refused-svc"), 10),
                               Tier("full", ("postgres", "redis", "http-api", "refused-svc",
                                             "kafka"), 100)], "file")
    (suite / "plan.json").write_text(json.dumps(plan))
    old = copy.deepcopy(report)
    old["tests"]["test_sample.py::test_no_services"]["needs"] = ["redis"]
    old["tests"]["test_sample.py::test_gone_since"] = old["tests"][
        "test_sample.py::test_no_services"]
    (suite / "old.json").write_text(json.dumps(old))
    proc = subprocess.run(e2e.SVCTRACE + ["html", "report.json", "-o", "site", "--plan",
                                          "plan.json", "--compare", "old.json"],
                          cwd=suite, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"svctrace html: {len(report['tests'])} tests, ")
    return suite / "site" / "index.html", report


def _select(browser: Browser, element: str, value: str) -> None:
    browser.js(f"var e = document.getElementById('{element}'); e.value = {json.dumps(value)};"
               "e.dispatchEvent(new Event('change'))")


def _shown(browser: Browser) -> list[str]:
    return browser.js("[...document.querySelectorAll('#matrix .row.test .name')]"
                      ".map(e => e.textContent)")


@needs_chromium
def test_sample_page_filters_explains_and_compares_in_a_real_browser(sample_page):
    page, report = sample_page
    browser = Browser()
    try:
        browser.open(page.as_uri())
        assert browser.js("document.body.dataset.ready") == "1"
        total = len(report["tests"])
        assert _shown(browser) and len(_shown(browser)) == total
        # by service: the tests that need kafka, as the report says
        kafka = sorted(n.split("::")[1] for n, t in report["tests"].items()
                       if "kafka" in t["needs"])
        assert kafka, "the sample suite has Kafka tests"
        _select(browser, "f-service", str(browser.js("D_services = JSON.parse(document."
                                                     "getElementById('svctrace-data')."
                                                     "textContent).services; "
                                                     "D_services.indexOf('kafka')")))
        assert sorted(_shown(browser)) == kafka
        assert "service=kafka" in browser.js("location.hash")
        _select(browser, "f-service", "")
        # text search, then outcome
        browser.js("var t = document.getElementById('f-text'); t.value = 'pg_pool';"
                   "t.dispatchEvent(new Event('input'));"
                   "new Promise(r => setTimeout(r, 300))")
        assert _shown(browser) == ["test_pg_pool_open", "test_pg_pool_reuse"]
        browser.js("var t = document.getElementById('f-text'); t.value = '';"
                   "t.dispatchEvent(new Event('input')); new Promise(r => setTimeout(r, 300))")
        options = browser.js("[...document.getElementById('f-outcome').options]"
                             ".map(o => o.value)")
        assert options == [""] + sorted({t["outcome"] for t in report["tests"].values()})
        _select(browser, "f-outcome", "passed")
        assert len(_shown(browser)) == sum(1 for t in report["tests"].values()
                                           if t["outcome"] == "passed")
        _select(browser, "f-outcome", "")
        # a test's evidence is explain's
        browser.js("[...document.querySelectorAll('#matrix .row.test')].find(r => "
                   "r.querySelector('.name').textContent === 'test_kafka_refused').click()")
        evidence = browser.js("document.getElementById('explain').textContent")
        assert evidence.startswith("test_sample.py::test_kafka_refused: passed")
        assert "needs: kafka" in evidence
        # the plan: kafka keeps test_sample.py out of the cheaper tier "db"
        extra = browser.js("document.getElementById('extra').textContent")
        assert "What keeps a file out of a cheaper tier" in extra
        assert "test_kafka_refused (kafka)" in extra
        # the comparison with the older report
        browser.js("var c = document.getElementById('f-changed'); c.checked = true;"
                   "c.dispatchEvent(new Event('change'))")
        assert _shown(browser) == ["test_no_services"]
        assert "test_sample.py::test_gone_since" in extra
        assert browser.errors == [], browser.errors
    finally:
        browser.close()


@needs_chromium
def test_filters_in_the_address_apply_on_load(sample_page):
    page, report = sample_page
    browser = Browser()
    try:
        browser.open(page.as_uri() + "#service=redis&q=pool&test=test_sample.py::"
                                     "test_redis_pool_open")
        assert _shown(browser) == ["test_redis_pool_open", "test_redis_pool_reuse"]
        assert browser.js("document.getElementById('explain').textContent").startswith(
            "test_sample.py::test_redis_pool_open: ")
        assert browser.errors == []
    finally:
        browser.close()


@needs_chromium
def test_tier_and_notes_are_not_cut_off_with_a_plan_and_a_comparison(sample_page):
    """As the user saw it at 1400 px: the header said "tier / not…", notes were clipped."""
    page, _ = sample_page
    browser = Browser()
    try:
        browser.call("Emulation.setDeviceMetricsOverride", {
            "width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False},
            session=True)
        browser.open(page.as_uri())
        clipped = ("[...document.querySelectorAll(SEL)].filter(e => e.scrollWidth > "
                   "e.clientWidth + 1 || e.scrollHeight > e.clientHeight + 1)"
                   ".map(e => e.textContent)")
        heads = browser.js("[...document.querySelectorAll('#matrix-head span.hz')]"
                           ".map(e => e.textContent)")
        assert heads == ["outcome", "sec", "tier / notes"]
        assert browser.js(clipped.replace("SEL", "'#matrix-head span.hz'")) == []
        notes = browser.js("[...document.querySelectorAll('#matrix .row.test .note')]"
                           ".map(e => e.textContent)")
        assert any("holds file" in n for n in notes) and any("-redis" in n for n in notes)
        assert browser.js(clipped.replace("SEL", "'#matrix .row.test .note'")) == []
        assert not browser.errors, browser.errors
    finally:
        browser.close()


@needs_chromium
def test_screenshot_of_the_sample_page(sample_page, tmp_path):
    page, _ = sample_page
    shot = tmp_path / "sample.png"
    proc = screenshot(page.as_uri() + "#service=postgres&test=test_sample.py::"
                                      "test_pg_unix_psycopg2", str(shot))
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 900)
    assert len(data) > 30_000  # a drawn page, not a blank one (blank is ~5 KB)


@needs_chromium
def test_the_browser_harness_sees_exceptions_and_console_errors(tmp_path):
    """The 'no console errors' checks above could not fail if the harness saw nothing."""
    page = tmp_path / "bad.html"
    page.write_text("<script>console.error('boom')</script><script>notDefined()</script>")
    browser = Browser()
    try:
        browser.open(page.as_uri())
        browser.js("1")  # let pending events arrive
        assert any("boom" in e for e in browser.errors), browser.errors
        assert any("notDefined" in e for e in browser.errors), browser.errors
    finally:
        browser.close()
