"""The summary of a report: short terminal text (end of `svctrace run`, `svctrace summary`),
a verbose variant, and Markdown for a CI job summary (pure: a report in, text out)."""
from __future__ import annotations

import signal
from collections import Counter

from svctrace.report.model import Plan, Report, as_plan, as_report
from svctrace.views.wire import wire_lines
from svctrace.words import counted, plural
from svctrace.views.names import internet_lines, service_name_lines

SETS_SHOWN = 8        # the default summary lists this many needed service sets
# Words for what a reader cannot guess from a service's name.
SERVICE_WORDS = {"dns": "name lookups on port 53"}


def service_rows(report: Report | dict) -> list[dict]:
    """Per service: tests that contacted it in their own windows (observed), tests that need
    it, and why the difference (inherited from wider-scoped fixtures, declared)."""
    observed, needed, inherited, declared = Counter(), Counter(), Counter(), Counter()
    started = Counter()
    for test in as_report(report).tests.values():
        if not test.ran:
            continue
        seen = set(test.services)
        observed.update(seen)
        started.update(test.suite_started)
        needed.update(test.needs)
        for service in test.needs:
            if service in seen:
                continue
            if service in test.inherited:
                inherited[service] += 1
            else:
                declared[service] += 1
    rows = []
    for service in sorted(set(observed) | set(needed), key=lambda s: (-needed[s], -observed[s], s)):
        rows.append({"service": service, "observed": observed[service],
                     "needs": needed[service], "inherited": inherited[service],
                     "declared": declared[service], "about": SERVICE_WORDS.get(service),
                     "suite_started": started[service]})
    return rows


def probe_rows(report: Report | dict) -> list[tuple[str, int]]:
    """(failed probe name, tests it was seen in), most frequent first."""
    counts = Counter(name for t in as_report(report).tests.values()
                     for name in t.failed_probes)
    return counts.most_common()


def _service_text(row: dict) -> str:
    text = f"{row['service']} {row['needs']}"
    why = []
    if row["inherited"]:
        why.append(f"{row['inherited']} inherited from wider-scoped fixtures")
    if row["declared"]:
        why.append(f"{row['declared']} declared")
    if row.get("suite_started"):
        why.append(f"{row['suite_started']} started by the suite itself")
    if row["observed"] != row["needs"] and not why:
        why.append(f"{row['observed']} observed, some in baseline")
    if why:
        text += f" ({', '.join(why)})"
    if row["about"]:
        text += f" [{row['about']}]"
    return text


def unseen_rows(report: Report) -> list[tuple[str, int]]:
    """(C client library the backend cannot see, tests whose process had loaded it)."""
    counts = Counter(name for t in report.tests.values() if t.ran
                     for name in t.unseen_clients)
    return sorted(counts.items(), key=lambda i: (-i[1], i[0]))


def unseen_text(report: Report) -> str | None:
    """One sentence: which tests' answers are incomplete, and why."""
    rows = unseen_rows(report)
    if not rows:
        return None
    return (f"INCOMPLETE: the {report.run.backend} backend cannot see C client "
            "libraries that tests' processes had loaded: "
            + ", ".join(f"{name} in {_tests(n)}" for name, n in rows)
            + "; what those tests reached through them is missing (`svctrace explain` names "
            "them; the ebpf or strace backend sees them)")


def lost_sentence(lost: int) -> str:
    """Why one test is incomplete, in one sentence (explain, html)."""
    return (f"INCOMPLETE: {counted(lost, 'record')} of this test's processes "
            f"{plural(lost, 'was')} lost (the eBPF ring buffer was full), so services it "
            "needs may be missing; `svctrace tiers` runs it in the most complete tier")


def lost_text(report: Report) -> str | None:
    """One sentence: which tests lost records, and what that means (None: none did)."""
    lossy = sorted(n for n, t in report.tests.items() if t.incomplete)
    unkept = int(report.run.backend_stats.get("lost_unkept", 0) or 0)
    if not lossy and not unkept:
        return None
    text = ""
    if lossy:
        shown = ", ".join(lossy[:5]) + (f" and {len(lossy) - 5} more" if len(lossy) > 5 else "")
        one = len(lossy) == 1
        text = (f"INCOMPLETE: records were lost while {_tests(len(lossy))} ran ({shown}): "
                f"services {'it needs' if one else 'they need'} may be missing, so "
                f"`svctrace tiers` runs {'it' if one else 'them'} in the most complete tier")
    if unkept:
        text += ("; " if text else "INCOMPLETE: ") + (
            f"{counted(unkept, 'lost record')} could not be told to a test, so any test's "
            "answer may be partial")
    return text


def _tests(n: int) -> str:
    return counted(n, "test")


def _unattributed(report: Report) -> Counter:
    reasons: Counter = Counter()
    for entry in report.unattributed:
        reasons[entry["reason"]] += 1
    return reasons


def denied_lines(report: Report | dict, verbose: bool = False, shown: int = 10) -> list[str]:
    """The guard: what it refused, and each test that tried a denied service
    with its first refusal (thread, destination, phase)."""
    report = as_report(report)
    run, found = report.run.extra, report.summary.get("denied", [])
    if not run.get("guard"):
        return []
    shadow = run["guard"].get("shadow")
    lines = [f"  guard{' (shadow: nothing refused)' if shadow else ''}: "
             f"{'would deny' if shadow else 'denied'} "
             f"{', '.join(run.get('denied_services', [])) or 'nothing'}; "
             f"{counted(len({d['test'] for d in found}), 'test')} tried a denied service"]
    refused = "would be refused" if shadow else "refused"
    for entry in found if verbose else found[:shown]:
        lines.append(f"    {entry['test']}: {entry['service']} ({entry['refusals']} {refused}, "
                     f"first from thread {entry['thread']} to {entry['destination']} in "
                     f"{entry['phase'] or 'no phase'})")
    if len(found) > len(lines) - 1:
        lines.append(f"    ... {len(found) - len(lines) + 1} more (-v lists them)")
    return lines


# What an exit status says when no test ran (pytest's documented codes, then the shell's).
PYTEST_EXITS = {2: "interrupted", 3: "internal error", 4: "usage error",
                5: "no tests collected"}
SHELL_EXITS = {126: "could not start", 127: "command not found"}


def command_name(command: list[str] | tuple[str, ...]) -> str:
    """What the user would call the command: `pytest` for `python -m pytest`."""
    if not command:
        return "the command"
    name = command[0].rsplit("/", 1)[-1]
    if name.startswith("python") and "-m" in command[:-1]:
        return command[list(command).index("-m") + 1]
    return name


def no_test_line(command, exit_code: int | None, path: str, written: bool,
                 markers: bool = True) -> str:
    """One sentence for a run in which no test ran: what happened, where the report went.
    With no markers at all, tests may have run unseen (a pytest without the plugin), unless
    the exit status says the command never got that far."""
    name = command_name(command)
    is_pytest = name in ("pytest", "py.test")
    why = SHELL_EXITS.get(exit_code) if exit_code is not None else None
    if why is None and is_pytest:
        why = PYTEST_EXITS.get(exit_code)
    if exit_code is not None and exit_code > 128:
        try:
            why = f"killed by {signal.Signals(exit_code - 128).name}"
        except ValueError:
            pass
    status = "ended" if exit_code is None else f"exited {exit_code}"
    certain = markers or exit_code in SHELL_EXITS or (is_pytest and exit_code in (4, 5))
    head = (f"{name} {status}{f' ({why})' if why else ''} "
            + ("before running any test" if certain else "and no test was seen to run"))
    if written:
        return f"{head}; this run's report (no tests) is {path}"
    return f"{head}: {path} still holds the last report; this run's was not written"


def _verdicts(report: Report) -> dict:
    """plan.proof.verdict_counts over the model's proven tests."""
    from svctrace.plan.proof import verdict_counts
    return verdict_counts({"tests": {n: {"needs_proof": t.needs_proof}
                                     for n, t in report.tests.items() if t.needs_proof}})


def proof_lines(report: Report | dict, verbose: bool = False, moved: int | None = None,
                shown: int = 10) -> list[str]:
    """svctrace prove's verdicts: per service, how many tests need it, were proven not to,
    or stay unproven; how many tests moved to a cheaper tier because of proof (`moved`, when
    tiers are configured); with verbose, one line per test and service."""
    from svctrace.plan.proof import NOT_NEEDED, verdict_text
    report = as_report(report)
    counts = _verdicts(report)
    if not counts:
        return []
    lines = ["  proof (re-runs with the service refused): " + ", ".join(
        f"{service}: {c['needed']} needed, {c[NOT_NEEDED]} not needed, {c['unproven']} "
        "unproven" for service, c in counts.items())]
    lighter = sum(1 for t in report.tests.values()
                  if any(v == NOT_NEEDED for v in t.needs_proof.values()))
    lines.append(f"  proof: {counted(lighter, 'test')} {plural(lighter, 'need')} fewer services than "
                 "they used"
                 + (f"; {moved} moved to a cheaper tier because of proof"
                    if moved is not None else ""))
    info = report.run.extra.get("proof") or {}
    if info.get("interrupted"):
        lines.append("  proof: interrupted; services not proven: "
                     + (", ".join(info.get("not_proven", [])) or "none"))
    records = [(n, s, r) for n, t in sorted(report.tests.items())
               for s, r in sorted((t.extra.get("proof") or {}).items())]
    for nodeid, service, record in records if verbose else records[:shown]:
        lines.append(f"    {nodeid}: {verdict_text(service, record)}")
    if not verbose and len(records) > shown:
        lines.append(f"    ... {len(records) - shown} more (-v lists them)")
    return lines


def format_summary(report: Report | dict, path: str | None = None, verbose: bool = False,
                   moved: int | None = None) -> str:
    """The terminal summary: what ran, lost events, services, sets, notes that matter;
    blind spots as one pointer line (listed with verbose)."""
    report = as_report(report)
    run, summary = report.run, report.summary
    collected = summary["tests"]
    interrupted = sum(1 for t in report.tests.values() if t.outcome == "interrupted")
    head = (f"svctrace: backend {run.backend}, {counted(summary['tests_ran'], 'test')} ran"
            + (f" ({collected} collected)" if collected != summary["tests_ran"] else "")
            + (f", {interrupted} interrupted" if interrupted else "")
            + f", {counted(run.lost_events, 'lost event')}"
            + (f", report {path}" if path else ""))
    lines = [head]
    if run.lost_events:
        lines.append(f"  WARNING: {counted(run.lost_events, 'event')} "
                     f"{plural(run.lost_events, 'was')} lost: services may be "
                     "missing (raise ringbuf_pages in [tool.svctrace])")
    lossy = lost_text(report)
    if lossy:
        lines.append(f"  {lossy}")
    unseen = unseen_text(report)
    if unseen:
        lines.append(f"  {unseen}")
    rows = service_rows(report)
    if rows:
        lines.append("  tests needing each service (observed in the test, unless said): "
                     + ", ".join(_service_text(r) for r in rows))
    probes = probe_rows(report)
    if probes:
        shown = probes if verbose else probes[:3]
        lines.append("  failed probes (attempts that reached nothing; not needs): "
                     + ", ".join(f"{name} in {counted(n, 'test')}" for name, n in shown)
                     + (f", {len(probes) - len(shown)} more (-v)" if len(probes) > len(shown)
                        else ""))
    lines += denied_lines(report, verbose)
    lines += proof_lines(report, verbose, moved)
    lines += service_name_lines(report)
    lines += internet_lines(report, verbose)
    lines += wire_lines(report, verbose)
    sets = summary["service_sets"]
    if sets:
        lines.append("  tests by needed service set:")
    shown_sets = sets if verbose else sets[:SETS_SHOWN]
    for entry in shown_sets:
        lines.append(f"    {entry['tests']:6d}  {' + '.join(entry['needs']) or '(none)'}")
    if len(sets) > len(shown_sets):
        rest = sum(e["tests"] for e in sets[len(shown_sets):])
        lines.append(f"    {rest:6d}  in {counted(len(sets) - len(shown_sets), 'more set')} "
                     "(-v lists them)")
    reasons = _unattributed(report)
    if reasons:
        lines.append("  traffic outside tests: " + ", ".join(
            f"{r} ({n})" for r, n in sorted(reasons.items())) + " — see report 'unattributed'"
            + ("" if verbose else " or `svctrace explain` of a test"))
        if verbose:
            for entry in report.unattributed:
                names = entry["services"] + list(entry.get("failed_probes", {}))
                lines.append(f"    {entry['reason']}: {entry['detail']}: {', '.join(names)}")
    for item in summary.get("incidental", []):
        lines.append(f"  baseline candidate: {item['service']} in {item['share']:.0%} of tests, "
                     f"only via {item['via']} (mark it baseline in [tool.svctrace] if not needed)")
    for note in run.notes:
        lines.append(f"  note: {note}")
    spots = run.blind_spots
    if verbose:
        events = run.events
        if events:
            lines.append("  events: " + ", ".join(f"{k} {v}" for k, v in events.items())
                         + " (noise, self_loopback and suite_listener are ignored by the rules)")
        for spot in spots:
            lines.append(f"  blind spot: {spot}")
    elif spots:
        lines.append(f"  {counted(len(spots), 'blind spot')} of the {run.backend} backend: listed by "
                     "`svctrace summary -v` and in the report's run.blind_spots")
    return "\n".join(lines)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_guard(report: Report, plan: Plan | dict | None) -> list[str]:
    """The guard's refusals as a table: each test that tried a denied service, the tier it
    ran in and, given the plan, the tier that covers it."""
    run, found = report.run, report.summary.get("denied", [])
    guard = run.extra.get("guard")
    if not guard:
        return []
    tier = guard.get("tier")
    tried = sorted({d["test"] for d in found})
    what = f"of tier `{_md(tier)}`" if tier else f"(--{guard.get('mode')})"
    lines = ["", f"**Guard** {what}: denied {_md(', '.join(run.extra.get('denied_services', [])) or 'nothing')}; "
             f"**{len(tried)} tests tried a denied service**."]
    if not found:
        return lines
    lines += ["", "| test | refused | ran in tier | belongs in tier | refusals | first refusal |",
              "|---|---|---|---|---:|---|"]
    for entry in found:
        home = "-"
        if plan is not None:
            test = report.tests.get(entry["test"])
            home = as_plan(plan).covering_tier(test.proven_needs if test else []) or "none covers it"
        lines.append(f"| `{_md(entry['test'])}` | {_md(entry['service'])} | {_md(tier or '-')} "
                     f"| {_md(home)} | {entry['refusals']} | thread {_md(entry['thread'])} to "
                     f"`{_md(entry['destination'])}` in {_md(entry['phase'] or 'no phase')} |")
    return lines


def markdown_summary(report: Report | dict, path: str | None = None,
                     plan: Plan | dict | None = None) -> str:
    """The same content for a CI job summary ($GITHUB_STEP_SUMMARY); with the tiers plan of
    a guarded run, the tier each refused test belongs in."""
    report = as_report(report)
    run, summary = report.run, report.summary
    lines = ["## svctrace", "",
             f"Backend **{run.backend}**, {counted(summary['tests_ran'], 'test')} ran of "
             f"{summary['tests']} collected, **{counted(run.lost_events, 'lost event')}**"
             + (f", report `{path}`" if path else "") + "."]
    if run.lost_events:
        lines += ["", f"> **Warning:** {counted(run.lost_events, 'event')} "
                  f"{plural(run.lost_events, 'was')} lost: services may "
                  "be missing (raise `ringbuf_pages` in `[tool.svctrace]`)."]
    lossy = lost_text(report)
    if lossy:
        lines += ["", f"> **{_md(lossy)}**"]
    unseen = unseen_text(report)
    if unseen:
        lines += ["", f"> **{_md(unseen)}**"]
    rows = service_rows(report)
    if rows:
        lines += ["", "| service | tests that need it | observed in the test | inherited from "
                  "fixtures | declared |", "|---|---:|---:|---:|---:|"]
        for r in rows:
            name = r["service"] + (f" ({r['about']})" if r["about"] else "")
            lines.append(f"| {_md(name)} | {r['needs']} | {r['observed']} | {r['inherited']} "
                         f"| {r['declared']} |")
    lines += _md_guard(report, plan)
    if summary["service_sets"]:
        lines += ["", "| tests | needed service set |", "|---:|---|"]
        for entry in summary["service_sets"]:
            lines.append(f"| {entry['tests']} | {_md(' + '.join(entry['needs']) or '(none)')} |")
    from svctrace.plan.proof import verdict_counts
    proven = _verdicts(report)
    if proven:  # svctrace prove
        lines += ["", "| service | proven needed | proven not needed | unproven |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {_md(s)} | {c['needed']} | {c['not_needed']} | {c['unproven']} |"
                  for s, c in proven.items()]
    probes = probe_rows(report)
    if probes:
        lines += ["", "Failed probes (attempts that reached nothing; not needs): "
                  + ", ".join(f"`{_md(n)}` in {counted(c, 'test')}" for n, c in probes) + "."]
    reasons = _unattributed(report)
    if reasons:
        lines += ["", "Traffic outside tests (report `unattributed`): " + ", ".join(
            f"{r} ({n})" for r, n in sorted(reasons.items())) + "."]
    for item in summary.get("incidental", []):
        lines += ["", f"Baseline candidate: **{item['service']}** in {item['share']:.0%} of "
                  f"tests, only via {_md(item['via'])}."]
    notes = run.notes
    if notes:
        lines += ["", "Notes:", ""] + [f"- {_md(n)}" for n in notes]
    spots = run.blind_spots
    if spots:
        lines += ["", f"<details><summary>{counted(len(spots), 'blind spot')} of the {run.backend} "
                  "backend</summary>", ""] + [f"- {_md(s)}" for s in spots] + ["", "</details>"]
    return "\n".join(lines) + "\n"
