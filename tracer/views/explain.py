"""Human-readable views of a report: `explain` one test, `drift` of declarations (pure)."""
from __future__ import annotations

import difflib
from collections import defaultdict

from svctrace.report import ReportError


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _contact_line(service: str, ev: dict) -> str:
    parts = []
    if ev["connects"]:
        failed = ev.get("failed_connects", 0)
        text = _count(ev["connects"], "connect")
        if failed == ev["connects"]:
            text += f" {ev['first']['result']}" if ev.get("first") else " failed"
        elif failed:
            text += f" ({failed} failed)"
        parts.append(text)
    if ev["sends"]:
        parts.append(_count(ev["sends"], "send"))
    first = ev.get("first") or {}
    threads = [t for t in ev.get("threads", []) if t]
    who = (f"from thread {first.get('thread')}" if first.get("background")
           else f"from main thread {first.get('thread')!s}")
    if len(threads) > 1:
        who += f" (threads: {', '.join(threads)})"
    where = f"in {', '.join(ev['phases'])}"
    if first.get("offset_ms") is not None:
        where += f", first {first['offset_ms']:.0f} ms into {first['phase']}"
    line = f"  {service}: {' and '.join(parts)} {who} {where}"
    detail = f"pid {first.get('pid')}"
    if first.get("cmdline"):
        detail += f": {first['cmdline'][:100]}"
    line += f"\n      to {first.get('destination')} ({detail})"
    if ev.get("fixtures"):
        line += f"\n      inside fixture(s): {', '.join(ev['fixtures'])}"
    return line


def explain_test(report: dict, nodeid: str) -> str:
    tests = report["tests"]
    if nodeid not in tests:
        close = difflib.get_close_matches(nodeid, list(tests), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ReportError(f"test {nodeid!r} is not in the report{hint}")
    test = tests[nodeid]
    head = f"{nodeid}: {test['outcome']}"
    if test.get("duration_s"):
        head += f" in {test['duration_s']:.2f} s"
    if test.get("worker"):
        head += f" on {test['worker']}"
    lines = [head, f"  needs: {', '.join(test['needs']) or 'no services'}"]
    if not test["ran"]:
        lines.append("  (collected but not run in this report: needs come from declarations)")
    for service, ev in test["evidence"].items():
        lines.append(_contact_line(service, ev))
    for service, fixtures in test.get("inherited", {}).items():
        lines.append(f"  {service} (inherited): set up or torn down by "
                     f"{', '.join(fixtures)}, which this test uses")
    if test.get("declared"):
        lines.append(f"  declared in [tool.svctrace.declare]: {', '.join(test['declared'])}")
    if test.get("baseline"):
        lines.append(f"  baseline, not counted in needs: {', '.join(test['baseline'])}")
    if not test["evidence"] and test["ran"]:
        lines.append(f"  no contact observed (backend {report['run']['backend']})")
    return "\n".join(lines)


def drift(report: dict) -> dict[str, dict[str, dict[str, list[str]]]]:
    """{file: {"hidden": {service: [tests]}, "stale": {service: [tests]}}} for tests that ran."""
    out: dict = defaultdict(lambda: {"hidden": defaultdict(list), "stale": defaultdict(list)})
    for nodeid, test in report["tests"].items():
        if not test["ran"]:
            continue
        seen = set(test["services"]) | set(test.get("inherited", {}))
        declared = set(test.get("declared", []))
        baseline = set(test.get("baseline", []))
        path = nodeid.split("::")[0]
        for service in sorted(seen - declared - baseline):
            out[path]["hidden"][service].append(nodeid)
        for service in sorted(declared - seen):
            out[path]["stale"][service].append(nodeid)
    return {path: {k: dict(v) for k, v in kinds.items() if v}
            for path, kinds in sorted(out.items()) if kinds["hidden"] or kinds["stale"]}


def drift_text(report: dict) -> tuple[str, bool]:
    found = drift(report)
    if not found:
        return "no drift: every observed service is declared and every declaration observed", False
    lines = []
    for path, kinds in found.items():
        lines.append(path)
        for service, tests in kinds.get("hidden", {}).items():
            lines.append(f"  hidden dependency: {service} in {_count(len(tests), 'test')} "
                         f"(e.g. {tests[0].split('::', 1)[-1]})")
        for service, tests in kinds.get("stale", {}).items():
            lines.append(f"  stale declaration: {service} never observed in "
                         f"{_count(len(tests), 'test')} (e.g. {tests[0].split('::', 1)[-1]})")
    return "\n".join(lines), True
