"""Human-readable views of a report: `explain` one test, `drift` of declarations (pure)."""
from __future__ import annotations

import difflib
from collections import defaultdict

from svctrace.report.model import Report, ReportError, as_report
from svctrace.join.evidence import MORE_DESTINATIONS
from svctrace.views.stacks import test_call_sites
from svctrace.views.wire import how_known
from svctrace.words import counted
from svctrace.views.names import where_text
from svctrace.views.summary import lost_sentence


# What a user cannot guess from the report's own words.
_IGNORED_WHY = {
    "self_loopback": "to and from its own listeners over loopback (a server the test "
                     "process runs itself: not an external service; ignore_self_loopback), "
                     "by listener",
    "noise": "of library and system probes (nscd, uuidd, syslog, D-Bus, netlink, UDP "
             "connects of name lookups: the default noise list and `ignore`)",
    "suite_listener": "sent to listeners of the traced suite itself whose protocol no "
                      "client's first bytes told (a helper the tests start: not a service)",
}
_RELATED_WHY = {
    "outlived-test": "a process or thread this test started, after the test ended",
    "between-tests": "right after this test, before the next one started",
}


_count = counted


def cut(text: str, limit: int = 160) -> str:
    """A command line whole, or cut at a word boundary with an ellipsis (never mid-word)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit + 1] else text[:limit]
    return head + " …"


def when_text(first: dict) -> str:
    """'4 ms into call', in a gap between phases '3 ms after call ended', outside tests
    '2 ms after the test ended' (after_ms: since the end of the test the entry names)."""
    offset = first.get("offset_ms")
    if first.get("after_ms") is not None and not first.get("phase"):
        return f"{first['after_ms']:.0f} ms after the test ended"
    if offset is None or not first.get("phase"):
        return ""
    if first.get("gap"):
        after = first["gap"].split("->", 1)[-1]
        return f"{offset:.0f} ms after {first['phase']} ended (before {after})"
    return f"{offset:.0f} ms into {first['phase']}"


def _connect_text(connects: int, failed: int, errors: dict, first_result: str | None) -> str:
    text = _count(connects, "connect")
    if not failed:
        return text
    why = ", ".join(f"{r} {n}" if len(errors) > 1 else r for r, n in errors.items()) \
        or first_result or "failed"
    return f"{text} {why}" if failed == connects else f"{text} ({failed} failed: {why})"


def _destination_lines(ev: dict, known: dict | None = None) -> list[str]:
    first = ev.get("first") or {}
    by_dest = ev.get("by_destination")
    if not by_dest:  # a report from before per-destination counts: the labels only
        return [f"      to {d}" for d in ev.get("destinations") or [first.get("destination")]]
    lines = []
    for label, counts in by_dest.items():
        parts = []
        if counts["connects"] or counts["failed_connects"]:
            parts.append(_connect_text(max(counts["connects"], counts["failed_connects"]),
                                       counts["failed_connects"], counts.get("errors", {}),
                                       None))
        if counts["sends"]:
            parts.append(_count(counts["sends"], "send"))
        lines.append(f"      to {where_text(label, counts)}: {', '.join(parts) or 'seen'}")
        how = how_known(known, label)  # what its traffic said of it
        if how:
            lines.append(f"        {how}")
    more = len(ev.get("destinations", [])) - len(by_dest)
    if more > 0:
        lines.append(f"      … and {_count(more, 'more destination')}")
    return lines


def _process_lines(ev: dict) -> list[str]:
    first = ev.get("first") or {}
    procs = ev.get("processes")
    if not procs:  # an older report: what the first event says
        what = "thread" if first.get("background") else "main thread"
        return [f"      from pid {first.get('pid')} ({what} {first.get('thread')}): "
                f"{cut(first.get('cmdline') or '?')}"]
    lines = []
    for pid, proc in procs.items():
        role = proc.get("role")
        if role == "pytest":
            who = f"pid {pid} (the test's pytest process)"
        elif role == "subprocess":
            who = f"pid {pid} (a subprocess, parent pid {proc.get('ppid') or '?'})"
        else:
            who = f"pid {pid} (not under pytest, parent pid {proc.get('ppid') or '?'})"
        threads = ", ".join(proc.get("threads", [])) or "?"
        lines.append(f"      from {who}, threads {threads}: {cut(proc.get('cmdline') or '?')}")
    return lines


def _contact_lines(service: str, ev: dict, label: str | None = None,
                   current: str | None = None, known: dict | None = None) -> list[str]:
    parts = []
    first = ev.get("first") or {}
    if ev.get("connects") or ev.get("failed_connects"):
        errors: dict = {}
        for counts in (ev.get("by_destination") or {}).values():
            for result, n in counts.get("errors", {}).items():
                errors[result] = errors.get(result, 0) + n
        parts.append(_connect_text(max(ev.get("connects", 0), ev.get("failed_connects", 0)),
                                   ev.get("failed_connects", 0), errors,
                                   first.get("result") if first.get("kind") == "connect"
                                   else None))
    if ev.get("sends"):
        parts.append(_count(ev["sends"], "send"))
    where = f" in {', '.join(ev['phases'])}" if ev.get("phases") else ""
    if ev.get("gaps"):
        where += f" (and between phases: {', '.join(ev['gaps'])})"
    lines = [f"  {label or service}: {' and '.join(parts) or 'seen'}{where}"]
    lines += _destination_lines(ev, known)
    lines += _process_lines(ev)
    if first:
        thread = first.get("thread")
        kind = "thread" if first.get("background") else "main thread"
        text = (f"      first: {first.get('kind')} to {first.get('destination')} "
                f"({first.get('result')}) by {kind} {thread} (pid {first.get('pid')}, "
                f"tid {first.get('tid')})")
        when = when_text(first)
        if when and first.get("test") and first["test"] != current:
            # a wider-scoped fixture's evidence spans tests: its first may be another's
            when += f" of {first['test']}"
        if when:
            text += f", {when}"
        if first.get("born_in") and first["born_in"] != current:
            text += f"; thread born in {first['born_in']}"
        lines.append(text)
    if ev.get("fixtures"):
        lines.append(f"      inside fixture(s): {', '.join(ev['fixtures'])}")
    return lines


# -- selecting tests ---------------------------------------------------------------------
def _keyword_matcher(expr: str):
    """A `pytest -k`-like expression: words (case-insensitive substrings of the node id)
    joined by and, or, not and parentheses."""
    import re
    tokens = re.findall(r"\(|\)|[^\s()]+", expr)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def atom():
        token = peek()
        if token is None:
            raise ReportError(f"-k {expr!r}: expression ends too early")
        take()
        if token == "not":
            inner = atom()
            return lambda s: not inner(s)
        if token == "(":
            inner = either()
            if take_if(")") is None:
                raise ReportError(f"-k {expr!r}: missing ')'")
            return inner
        if token in ("and", "or", ")"):
            raise ReportError(f"-k {expr!r}: unexpected {token!r}")
        word = token.lower()
        return lambda s: word in s

    def take_if(token):
        return take() if peek() == token else None

    def joined(operand, word: str, join):
        """operand (word operand)*, left to right: and binds tighter than or."""
        terms = [operand()]
        while take_if(word):
            terms.append(operand())
        return terms[0] if len(terms) == 1 else (lambda s: join(t(s) for t in terms))

    def both():
        return joined(atom, "and", all)

    def either():
        return joined(both, "or", any)

    matcher = either()
    if peek() is not None:
        raise ReportError(f"-k {expr!r}: unexpected {peek()!r}")
    return lambda nodeid: matcher(nodeid.lower())


def select_tests(report: Report | dict, selectors: list[str] | tuple = (),
                 keyword: str | None = None) -> list[str]:
    """Node ids chosen by exact node ids, node id prefixes, file or folder paths, and/or a
    -k-like expression; in report order. Nothing found is an error with close names."""
    tests = as_report(report).tests
    chosen: list[str] = []
    for sel in selectors:
        if sel in tests:
            found = [sel]
        else:
            path = sel.rstrip("/")
            found = [n for n in tests if n.startswith(sel) or n.split("::")[0] == path
                     or n.startswith(path + "/")]
        if not found:
            close = difflib.get_close_matches(sel, list(tests), n=3, cutoff=0.5)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ReportError(f"test {sel!r} is not in the report{hint}")
        chosen += found
    if keyword is not None:
        matcher = _keyword_matcher(keyword)
        chosen = [n for n in (chosen if selectors else tests) if matcher(n)]
        if not chosen:
            raise ReportError(f"no test in the report matches -k {keyword!r}")
    if not selectors and keyword is None:
        raise ReportError("name a test: a node id, a node id prefix, a file, or -k EXPR")
    return list(dict.fromkeys(chosen))


# -- what explain knows about one test ---------------------------------------------------
def related(report: Report | dict, nodeid: str) -> dict:
    """Traffic that involves the test but is not in its own evidence: traffic of processes
    and threads it started after it ended, traffic right after it, and wider-scoped
    fixtures whose own traffic fell in its windows."""
    report = as_report(report)
    found = {"unattributed": [], "fixtures": []}
    for entry in report.unattributed:
        detail = entry.get("detail", "")
        if (entry["reason"] == "outlived-test" and detail.endswith(f" started in {nodeid}")) \
                or (entry["reason"] == "between-tests"
                    and detail.startswith(f"after {nodeid} (")):
            found["unattributed"].append(entry)
    test = report.tests.get(nodeid)
    uses = {f for fids in (test.inherited if test else {}).values() for f in fids}
    for fid, fixture in report.fixtures.items():
        phases = fixture.tests.get(nodeid)
        if phases is None:
            firsts = [e.get("first") or {} for e in fixture.evidence.values()]
            if not any(f.get("test") == nodeid for f in firsts):
                continue
            phases = sorted({f.get("phase") for f in firsts if f.get("test") == nodeid})
        found["fixtures"].append({"fixture": fid, "scope": fixture.scope,
                                  "services": fixture.services, "phases": phases,
                                  "used_by_test": fid in uses,
                                  "evidence": fixture.evidence})
    return found


def explain_data(report: Report | dict, nodeid: str) -> dict:
    """Everything `explain` says about one test, for `explain --json`."""
    report = as_report(report)
    return {"nodeid": nodeid, "backend": report.run.backend,
            **report.tests[nodeid].to_dict(), "related": related(report, nodeid)}


def explain_one(report: Report | dict, nodeid: str) -> str:
    report = as_report(report)
    data = explain_data(report, nodeid)
    head = f"{nodeid}: {data['outcome']}"
    if data.get("duration_s"):
        head += f" in {data['duration_s']:.2f} s"
    if data.get("worker"):
        head += f" on {data['worker']}"
    lines = [head, f"  needs: {', '.join(data['needs']) or 'no services'}"]
    sources = []
    if data["services"]:
        sources.append(f"observed {', '.join(data['services'])}")
    if data.get("inherited"):
        sources.append(f"inherited {', '.join(data['inherited'])}")
    if data.get("declared"):
        sources.append(f"declared {', '.join(data['declared'])}")
    if sources:
        lines[-1] += f"  ({'; '.join(sources)})"
    if not data["ran"]:
        lines.append("  (collected but not run in this report: needs come from declarations)")
    if data.get("unseen_clients"):
        lines.append(f"  INCOMPLETE: its process had loaded {', '.join(data['unseen_clients'])}"
                     f", which the {data['backend']} backend cannot see: services this test "
                     "reached through them are missing here (the ebpf or strace backend "
                     "sees them)")
    if data.get("incomplete"):
        lines.append(f"  {lost_sentence(data.get('lost_events', 0))}")
    sites = test_call_sites(report, nodeid)  # svctrace run --stacks: first
    if sites:
        lines += ["  where in the code (Python stacks of each first contact):", *sites]
    known = report.destinations
    for service, ev in data["evidence"].items():
        lines += _contact_lines(service, ev, current=nodeid, known=known)
    if data.get("suite_started"):
        lines.append(f"  started by the suite itself, not needs (reached only at listeners "
                     f"of the traced tree): {', '.join(data['suite_started'])}")
    for service, fixtures in data.get("inherited", {}).items():
        how = "also inherited" if service in data["services"] else \
            "inherited, not observed in this test"
        lines.append(f"  {service} ({how}): set up or torn down by {', '.join(fixtures)}, "
                     "a wider-scoped fixture this test uses")
    if data.get("declared"):
        lines.append(f"  declared in [tool.svctrace.declare]: {', '.join(data['declared'])}")
    if data.get("baseline"):
        lines.append(f"  baseline, not counted in needs: {', '.join(data['baseline'])}")
    for name, ev in (data.get("denied_evidence") or {}).items():  # refused by the guard
        lines += _contact_lines(name, ev, f"{name} (would be refused by svctrace's shadow "
                                          "guard; a need)" if ev.get("shadow") else
                                f"{name} (refused by svctrace's guard; a need)")
    if data.get("proof"):  # svctrace prove: what re-runs with each service refused showed
        from svctrace.plan.proof import proven_needs, verdict_text
        lines.append(f"  proof (needs once proven: {', '.join(proven_needs(data)) or 'none'}):")
        lines += [f"    {verdict_text(s, r)}" for s, r in data["proof"].items()]
    probes = data.get("failed_probes") or {}
    if probes:
        lines.append("  failed probes (attempts that reached nothing; not needs):")
        for name, ev in probes.items():
            lines += ["  " + line for line in _contact_lines(name, ev, known=known)]
    rel = data["related"]
    if rel["unattributed"] or rel["fixtures"]:
        lines.append("  traffic involving this test, reported elsewhere:")
    for entry in rel["unattributed"]:
        why = _RELATED_WHY.get(entry["reason"], entry["reason"])
        lines.append(f"    unattributed '{entry['reason']}' ({entry['detail']}): {why} "
                     "(not in its needs)")
        for service, ev in entry.get("evidence", {}).items():
            lines += ["    " + line for line in _contact_lines(service, ev)]
        for name, ev in entry.get("failed_probes", {}).items():
            lines += ["    " + line for line in _contact_lines(name, ev, f"{name} (failed probe)")]
    for fx in rel["fixtures"]:
        uses = ("this test uses it: inherited, in its needs" if fx["used_by_test"]
                else "this test does not use it: charged to the fixture, not in its needs")
        lines.append(f"    {fx['scope']}-scoped fixture {fx['fixture']} ran in this test's "
                     f"{', '.join(fx['phases'])}: {', '.join(fx['services'])} ({uses}); "
                     "its traffic over every test it ran in:")
        for service, ev in fx.get("evidence", {}).items():
            lines += ["    " + line for line in _contact_lines(service, ev, current=nodeid)]
    ignored = data.get("ignored") or {}
    for why, labels in ignored.items():
        total = sum(labels.values())
        named = [f"{label} {n}" for label, n in labels.items() if label != MORE_DESTINATIONS]
        if MORE_DESTINATIONS in labels:  # what did not fit: counted, its labels not kept
            named.append(f"{labels[MORE_DESTINATIONS]} more to other destinations")
        lines.append(f"  ignored {_count(total, 'event')} {_IGNORED_WHY.get(why, why)}: "
                     + ", ".join(named))
    if not data["evidence"] and data["ran"]:
        pointers = []
        if probes:
            pointers.append("failed probes")
        if rel["unattributed"] or rel["fixtures"]:
            pointers.append("traffic reported elsewhere")
        if ignored:
            pointers.append("ignored traffic")
        text = f"  no contact observed in this test's own windows (backend {data['backend']})"
        if pointers:
            text += f"; see {' and '.join(pointers)} above"
        lines.append(text)
    return "\n".join(lines)


def explain_test(report: Report | dict, nodeid: str) -> str:
    """`svctrace explain REPORT NODEID` for one selector (kept for callers of one test)."""
    report = as_report(report)
    return explain_text(report, select_tests(report, [nodeid]))


def explain_text(report: Report | dict, nodeids: list[str]) -> str:
    report = as_report(report)
    return "\n\n".join(explain_one(report, n) for n in nodeids)


def drift(report: Report | dict) -> dict[str, dict[str, dict[str, list[str]]]]:
    """{file: {"hidden": {service: [tests]}, "stale": {service: [tests]}}} for tests that ran."""
    out: dict = defaultdict(lambda: {"hidden": defaultdict(list), "stale": defaultdict(list)})
    for nodeid, test in as_report(report).tests.items():
        if not test.ran:
            continue
        seen = set(test.services) | set(test.inherited)
        declared = set(test.declared)
        baseline = set(test.baseline)
        path = nodeid.split("::")[0]
        for service in sorted(seen - declared - baseline):
            out[path]["hidden"][service].append(nodeid)
        for service in sorted(declared - seen):
            out[path]["stale"][service].append(nodeid)
    return {path: {k: dict(v) for k, v in kinds.items() if v}
            for path, kinds in sorted(out.items()) if kinds["hidden"] or kinds["stale"]}


def drift_text(report: Report | dict) -> tuple[str, bool]:
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
