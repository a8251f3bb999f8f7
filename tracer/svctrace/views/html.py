"""`svctrace html`: one static, self-contained page over a report (pure: a report in, text out).

Everything is inlined (data, style, script): no server, no CDN, it opens from file:// as a CI
artifact. The tests × services matrix is drawn lazily (only the rows in view), so a suite of
30,000 tests stays fast; the page's data is one JSON block the script reads.
"""
from __future__ import annotations

import html
import json

from svctrace.plan.tiers import group_key, tier_of
from svctrace.report.model import Plan, Report, TestRecord, as_plan, as_report
from svctrace.views.explain import explain_one
from svctrace.views.html_assets import SCRIPT, STYLE
from svctrace.views.summary import format_summary
from svctrace.words import counted

PAGE_SCHEMA = "svctrace-html/1"


def _split(nodeid: str) -> tuple[str, str, str]:
    """(file, class path or "", test name): the matrix's grouping."""
    head, bracket, params = nodeid.partition("[")
    parts = head.split("::")
    name = parts[-1] + bracket + params
    return parts[0], "::".join(parts[1:-1]), name


PROOF_LETTERS = {"needed": "P", "not_needed": "x", "unproven": "?"}


def _cells(test: TestRecord, services: dict[str, int]) -> dict[int, str]:
    """Per service index: phase letters observed (s, c, t), i inherited, d declared,
    b baseline, g gap; only services the test has anything for."""
    cells: dict[int, str] = {}
    for phase, letter in (("setup", "s"), ("call", "c"), ("teardown", "t")):
        for service in test.phases.get(phase, []):
            cells[services[service]] = cells.get(services[service], "") + letter
    for service, ev in test.evidence.items():
        if ev.get("gaps") and service in services:
            cells[services[service]] = cells.get(services[service], "") + "g"
    for inferred, letter in ((test.inherited, "i"), (test.declared, "d"), (test.baseline, "b")):
        for service in inferred:
            cells[services[service]] = cells.get(services[service], "") + letter
    for service, verdict in test.needs_proof.items():  # svctrace prove
        if service in services:
            cells[services[service]] = cells.get(services[service], "") + PROOF_LETTERS[verdict]
    return cells


def _held_back(report: Report, plan: Plan) -> list[dict]:
    """Groups (files or classes) placed in a costlier tier than some of their tests need,
    with the tests that keep them there."""
    if plan.granularity == "test":
        return []
    rank = {name: i for i, name in enumerate(plan.order)}
    groups: dict[str, list[str]] = {}
    for nodeid in report.tests:
        groups.setdefault(group_key(nodeid, plan.granularity), []).append(nodeid)
    found = []
    for key, members in sorted(groups.items()):
        tier = tier_of(plan, members[0])
        own = {n: plan.covering_tier(report.tests[n].proven_needs) for n in members}
        if not any(t is not None and rank[t] < rank[tier] for t in own.values()):
            continue
        holders = [n for n, t in own.items() if t is None or rank[t] >= rank[tier]]
        found.append({"group": key, "tier": tier, "tests": len(members),
                      "cheaper": sum(1 for t in own.values()
                                     if t is not None and rank[t] < rank[tier]),
                      "holders": [{"nodeid": n, "needs": report.tests[n].needs,
                                   "ran": report.tests[n].ran}
                                  for n in holders]})
    return found


def _changes(report: Report, old: Report) -> tuple[dict[str, str], list[str]]:
    """({nodeid: what changed since the old report}, node ids only the old report has)."""
    changed: dict[str, str] = {}
    before = old.tests
    for nodeid, test in report.tests.items():
        was = before.get(nodeid)
        if was is None:
            changed[nodeid] = "new test"
            continue
        parts = []
        added = sorted(set(test.needs) - set(was.needs))
        removed = sorted(set(was.needs) - set(test.needs))
        parts += [f"+{s}" for s in added] + [f"-{s}" for s in removed]
        if was.outcome != test.outcome:
            parts.append(f"{was.outcome} → {test.outcome}")
        if parts:
            changed[nodeid] = " ".join(parts)
    gone = sorted(set(before) - set(report.tests))
    return changed, gone


def page_data(report: Report | dict, plan: Plan | dict | None = None,
              old: Report | dict | None = None) -> dict:
    """What the page's script reads: the matrix rows, the explain text per test, and the
    run-level tables."""
    report = as_report(report)
    plan = as_plan(plan) if plan is not None else None
    old = as_report(old) if old is not None else None
    tests = report.tests
    counts: dict[str, int] = {}
    for test in tests.values():
        for service in set(test.services) | set(test.needs) \
                | set(test.baseline) | set(test.inherited):
            counts[service] = counts.get(service, 0) + 1
    services = sorted(counts, key=lambda s: (-counts[s], s))
    index = {s: i for i, s in enumerate(services)}
    files: dict[str, int] = {}
    classes: dict[str, int] = {"": 0}
    changed, gone = _changes(report, old) if old is not None else ({}, [])
    holders = {}
    held = _held_back(report, plan) if plan else []
    for group in held:
        for h in group["holders"]:
            holders[h["nodeid"]] = group["group"]
    rows, details = [], []
    ordered = sorted(tests, key=lambda n: _split(n)[:2] + (n,))
    for nodeid in ordered:
        test = tests[nodeid]
        path, cls, name = _split(nodeid)
        files.setdefault(path, len(files))
        classes.setdefault(cls, len(classes))
        probes = sorted(test.failed_probes)
        rows.append([name, files[path], classes[cls],
                     "?" if test.outcome is None else test.outcome,
                     round(test.duration_s or 0, 3),
                     {str(k): v for k, v in sorted(_cells(test, index).items())},
                     tier_of(plan, nodeid) if plan else "",
                     changed.get(nodeid, ""), " ".join(probes),
                     holders.get(nodeid, "")])
        details.append(explain_one(report, nodeid))
    run = report.run
    return {
        "schema": PAGE_SCHEMA,
        "run": {"backend": run.backend, "command": " ".join(run.command),
                "started_at": run.extra.get("started_at"), "lost_events": run.lost_events,
                "tests": len(tests), "tests_ran": report.summary.get("tests_ran")},
        "summary": format_summary(report, verbose=True),
        "services": services,
        "files": list(files),
        "classes": list(classes),
        "rows": rows,
        "details": details,
        "unattributed": [{"reason": e["reason"], "detail": e["detail"],
                          "services": e["services"] + sorted(e.get("failed_probes", {})),
                          "destinations": sorted({d for ev in list(e.get("evidence", {}).values())
                                                  + list(e.get("failed_probes", {}).values())
                                                  for d in ev.get("destinations", [])})}
                         for e in report.unattributed],
        "fixtures": [{"fixture": fid, "scope": f.scope, "services": f.services,
                      "tests": sorted(f.tests)} for fid, f in report.fixtures.items()],
        "plan": None if not plan else {
            "granularity": plan.granularity, "order": plan.order,
            "fallback": plan.fallback,
            "tiers": {n: {"services": t.services, "tests": len(t.tests)}
                      for n, t in plan.tiers.items()},
            "held": held},
        "compare": None if old is None else {"changed": len(changed), "gone": gone},
    }


def _script_json(data: dict) -> str:
    # Inside <script>, "</" would end the element: escape it (and the HTML comment opener).
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return text.replace("</", "<\\/").replace("<!--", "<\\!--")


def build_page(report: Report | dict, plan: Plan | dict | None = None,
               old: Report | dict | None = None, title: str | None = None) -> str:
    """The whole page, one string."""
    data = page_data(report, plan, old)
    title = title or f"svctrace: {counted(data['run']['tests'], 'test')}, backend {data['run']['backend']}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<header><h1>{html.escape(title)}</h1><div id=\"runline\"></div></header>"
        "<nav id=\"controls\">"
        "<label>service <select id=\"f-service\"><option value=\"\">any</option></select></label>"
        "<label>outcome <select id=\"f-outcome\"><option value=\"\">any</option></select></label>"
        "<label id=\"l-tier\" hidden>tier <select id=\"f-tier\"><option value=\"\">any</option>"
        "</select></label>"
        "<label id=\"l-changed\" hidden><input type=\"checkbox\" id=\"f-changed\"> changed only"
        "</label>"
        "<input id=\"f-text\" type=\"search\" placeholder=\"search node ids, e.g. kafka\">"
        "<span id=\"count\"></span></nav>"
        "<main><section id=\"matrix-wrap\"><div id=\"matrix-head\"></div>"
        "<div id=\"matrix\" tabindex=\"0\"><div id=\"spacer\"></div></div>"
        "<p class=\"legend\">cells: <b>s</b> setup, <b>c</b> call, <b>t</b> teardown (observed "
        "in the test's own windows), <b>g</b> between its phases, <b>i</b> inherited from a "
        "wider-scoped fixture, <b>d</b> declared, <b>b</b> baseline (not in needs); proof "
        "(svctrace prove): <b>P</b> needed, <b>x</b> not needed, <b>?</b> unproven. Click a "
        "test for its evidence.</p></section>"
        "<aside id=\"detail\"><p class=\"muted\">Click a test to see why it needs each "
        "service.</p></aside></main>"
        "<section id=\"extra\"></section>"
        f"<script type=\"application/json\" id=\"svctrace-data\">{_script_json(data)}</script>"
        f"<script>{SCRIPT}</script></body></html>\n")
