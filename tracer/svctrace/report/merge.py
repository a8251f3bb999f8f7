"""Merges svctrace reports from many shards or machines into one report (pure)."""
from __future__ import annotations

import hashlib
import heapq
import json
from typing import Any

from svctrace import REPORT_SCHEMA, __version__
from svctrace.errors import SvctraceError
from svctrace.events import TEST_PHASES
from svctrace.join.analysis import summarize
from svctrace.plan.proof import join_proof
from svctrace.report.model import Report


class MergeError(SvctraceError):
    """Reports that cannot be merged: other schema, or runs that contradict each other."""


# Key orders of the dicts build_report writes (see _combine).
_TEST_KEYS = ("services", "phases", "outcome", "ran", "ran_in", "duration_s", "worker",
              "evidence", "inherited", "declared", "baseline", "needs")
_CONTACT_KEYS = ("phases", "connects", "sends", "failed_connects", "background", "threads",
                 "destinations", "fixtures", "first")
# Worst wins, so a failure in any shard stays visible; "not run" never beats a real outcome.
_OUTCOME_RANK = {"not run": 0, "skipped": 1, "xfailed": 2, "passed": 3, "xpassed": 4,
                 "failed": 5, "error": 6, "interrupted": 7}
_PHASE_RANK = {p: i for i, p in enumerate(TEST_PHASES)}
_KEY_RANK = {k: i for i, k in enumerate(dict.fromkeys(
    TEST_PHASES + _TEST_KEYS + _CONTACT_KEYS
    + ("reason", "detail", "scope", "service", "via", "share", "tests",
       "backend", "exit_code", "lost_events", "tests_ran", "command", "config")))}


def _key_order(key: str) -> tuple:
    return (_KEY_RANK.get(key, len(_KEY_RANK)), key)


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _first_key(first: Any) -> tuple:
    # Timestamps of different runs are not comparable: order by phase, offset in the phase,
    # then the whole record, which is stable whatever order the inputs come in.
    if not isinstance(first, dict):
        return (99, float("inf"), _canon(first))
    offset = first.get("offset_ms")
    return (_PHASE_RANK.get(first.get("phase"), 98),
            offset if isinstance(offset, (int, float)) else float("inf"), _canon(first))


def _combine(a: Any, b: Any, key: str | None = None) -> Any:
    """Join two values of the same field: a commutative, associative, idempotent operation."""
    if a is None:
        return b
    if b is None:
        return a
    if key in ("first", "refused"):  # "refused": a proof's first refused contact
        return min(a, b, key=_first_key)
    if key == "command":  # an argv: its order matters, so pick one, never union it
        return min(a, b, key=_canon)
    if key in ("outcome", "traced", "control", "denied_run"):  # a proof's outcomes too
        return max(a, b, key=lambda o: (_OUTCOME_RANK.get(o, 3), o))
    if key == "scope":  # a fixture scope; "?" means it was never seen being set up
        known = {a, b} - {"?"}
        return min(known) if known else "?"
    if isinstance(a, bool) and isinstance(b, bool):
        return a or b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) \
            and not isinstance(a, bool) and not isinstance(b, bool):
        return max(a, b)  # counts take the max: the same run given twice is not two runs
    if isinstance(a, list) and isinstance(b, list):
        if all(isinstance(x, str) for x in a + b):
            items = set(a) | set(b)
            if key == "phases":
                return sorted(items, key=lambda p: (_PHASE_RANK.get(p, 99), p))
            return sorted(items)
        unique = {_canon(x): x for x in a + b}
        return [unique[k] for k in sorted(unique)]
    if isinstance(a, dict) and isinstance(b, dict):
        # Keys in the order build_report writes them, so the merged file reads like a
        # normal report and its bytes do not depend on the order of the inputs.
        keys = sorted(set(a) | set(b), key=_key_order)
        # A key on one side only is joined with itself, which normalises it the same way.
        return {k: _combine(a.get(k, b.get(k)), b.get(k, a.get(k)), k) for k in keys}
    return min(a, b, key=_canon)  # conflicting scalars: any fixed choice keeps merge pure


def _merge_test(a: dict, b: dict) -> dict:
    merged = _combine({k: v for k, v in a.items() if k != "worker"},
                      {k: v for k, v in b.items() if k != "worker"})
    # Which worker ran it is only meaningful where it ran: a collected-only record's
    # worker must not replace it.
    ran_a, ran_b = bool(a.get("ran")), bool(b.get("ran"))
    workers = [t.get("worker") for t, ran in ((a, ran_a), (b, ran_b))
               if ran == (ran_a or ran_b) and t.get("worker") is not None]
    merged["worker"] = min(workers) if workers else None
    if "proof" in merged:  # verdicts are decided from every shard's, not combined as text
        merged["proof"] = {s: join_proof(r) for s, r in merged["proof"].items()}
        merged["needs_proof"] = {s: r["verdict"] for s, r in merged["proof"].items()}
    return {k: merged[k] for k in sorted(merged, key=_key_order)}


def _run_id(report: Report) -> str:
    run_id = report.run.run_id
    if isinstance(run_id, str) and run_id:
        return run_id
    # Reports without an id: the content names the run, so a duplicate input counts once.
    return "content-" + hashlib.sha256(_canon(report.to_dict()).encode()).hexdigest()[:32]


def _runs_of(report: Report) -> dict[str, dict]:
    """The distinct runs an input stands for: its own, or the `runs` of a merged report."""
    run = report.run
    if run.has("runs") and isinstance(run.runs, dict):
        return run.runs
    tests_ran = (report.summary or {}).get("tests_ran")
    if tests_ran is None:
        tests_ran = len(report.ran())
    return {_run_id(report): {"backend": run.backend, "exit_code": run.exit_code,
                              "lost_events": int(run.lost_events or 0),
                              "tests_ran": tests_ran, "command": list(run.command),
                              "config": run.config}}


def _tests_of(report: Report) -> dict[str, dict]:
    if report.run.has("runs"):
        return {nodeid: t.to_dict() for nodeid, t in report.tests.items()}
    run_id = _run_id(report)
    return {nodeid: {**t.to_dict(), "ran_in": [run_id] if t.ran else []}
            for nodeid, t in report.tests.items()}


def _check(reports: list[dict]) -> None:
    if not reports:
        raise MergeError("nothing to merge: give at least one report")
    for index, report in enumerate(reports, 1):
        schema = report.get("schema") if isinstance(report, dict) else None
        if schema != REPORT_SCHEMA:
            raise MergeError(f"input {index} has schema {schema!r}; svctrace merges "
                             f"{REPORT_SCHEMA!r}")
        if not isinstance(report.get("run"), dict) or not isinstance(report.get("tests"), dict):
            raise MergeError(f"input {index} has no 'run' or 'tests' table: not a report")


def _merge_runs(reports: list[Report], allow_mixed: bool) -> dict[str, dict]:
    runs: dict[str, dict] = {}
    for report in reports:
        for run_id, run in _runs_of(report).items():
            if run_id in runs and runs[run_id].get("backend") != run.get("backend"):
                raise MergeError(f"run {run_id} appears with backends "
                                 f"{runs[run_id].get('backend')!r} and {run.get('backend')!r}: "
                                 "these reports contradict each other")
            runs[run_id] = _combine(runs.get(run_id, run), run)
    backends = {r.get("backend") for r in runs.values()}
    if len(backends) > 1 and not allow_mixed:
        listing = ", ".join(f"{b} ({sum(1 for r in runs.values() if r.get('backend') == b)} "
                            "runs)" for b in sorted(backends, key=str))
        raise MergeError(f"the reports come from different backends: {listing}. Backends see "
                         "different things (in-process is blind to libpq); pass --allow-mixed "
                         "(allow_mixed=True) to merge anyway")
    return dict(sorted(runs.items()))


def _merge_unattributed(reports: list[Report]) -> list[dict]:
    buckets: dict[tuple, dict] = {}
    for report in reports:
        for entry in report.unattributed:
            key = (str(entry.get("reason")), str(entry.get("detail")))
            buckets[key] = _combine(buckets.get(key, entry), entry)
    return [buckets[k] for k in sorted(buckets)]


def _merge_incidental(reports: list[Report]) -> list[dict]:
    found: dict[tuple, dict] = {}
    for report in reports:
        for item in (report.summary or {}).get("incidental", []):
            key = (str(item.get("service")), str(item.get("via")))
            found[key] = _combine(found.get(key, item), item)
    return [found[k] for k in sorted(found)]


def run_order(orders: list[list[str]]) -> list[str]:
    """One order of every node id that keeps each input's order (pytest's run order: what
    users diff). Tests no input orders against each other (two shards' own tests) go by
    node id, and so do tests that inputs order differently (pytest-randomly), so the result
    does not depend on the order of the inputs."""
    after: dict[str, set[str]] = {}
    before: dict[str, int] = {}
    for order in orders:
        for nodeid in order:
            after.setdefault(nodeid, set())
            before.setdefault(nodeid, 0)
        for a, b in zip(order, order[1:]):
            if b not in after[a]:
                after[a].add(b)
                before[b] += 1
    ready = [n for n, count in before.items() if not count]
    heapq.heapify(ready)
    out: list[str] = []
    left = set(after)
    while left:
        if not ready:  # inputs disagree: a cycle; the smallest id left goes first
            ready = [min(left)]
        nodeid = heapq.heappop(ready)
        if nodeid not in left:
            continue
        left.discard(nodeid)
        out.append(nodeid)
        for nxt in after[nodeid]:
            before[nxt] -= 1
            if before[nxt] == 0 and nxt in left:
                heapq.heappush(ready, nxt)
    return out


def merge_reports(reports: list[Report | dict], allow_mixed: bool = False) -> dict:
    """One report holding the union of the inputs' evidence.

    Idempotent, commutative and associative: merged reports can be merged again, and the
    same report given twice counts once (runs are identified by `run.run_id`). The union
    itself works on the JSON values, whatever their field: a newer svctrace's fields merge too.
    """
    _check([r.to_dict() if isinstance(r, Report) else r for r in reports])
    reports = [r if isinstance(r, Report) else Report.from_dict(r, f"input {i}")
               for i, r in enumerate(reports, 1)]
    runs = _merge_runs(reports, allow_mixed)
    tests: dict[str, dict] = {}
    for report in reports:
        for nodeid, test in _tests_of(report).items():
            # Joining a record with itself normalises it (sorted lists), so a test seen in
            # one input looks exactly as it would after being seen in several.
            tests[nodeid] = _merge_test(tests.get(nodeid, test), test)
    fixtures: dict[str, dict] = {}
    for report in reports:
        for fid, record in report.fixtures.items():
            fixture = record.to_dict()
            fixtures[fid] = _combine(fixtures.get(fid, fixture), fixture)
    destinations: dict[str, dict] = {}  # what each run's wire said of each destination
    for report in reports:
        for label, entry in report.destinations.items():
            destinations[label] = _combine(destinations.get(label, entry), entry)
    blind_spots: set[str] = set()
    baseline: set[str] = set()
    names = None  # host name -> addresses and how, over every run (docs/naming.md)
    for report in reports:
        blind_spots.update(report.run.blind_spots)
        baseline.update(report.run.baseline)
        names = _combine(names, report.run.extra.get("names") or {})
    backends = {r.get("backend") for r in runs.values()}
    # Per run, so that merging merged reports agrees with merging all inputs at once.
    configs = {r.get("config") for r in runs.values()}
    exit_codes = [r["exit_code"] for r in runs.values() if isinstance(r.get("exit_code"), int)]
    merged = {
        "schema": REPORT_SCHEMA,
        "run": {
            "svctrace_version": __version__,
            # Derived from the runs, not random: merging the same inputs gives the same file.
            "run_id": "merged-" + hashlib.sha256("\n".join(runs).encode()).hexdigest()[:32],
            "backend": backends.pop() if len(backends) == 1 else "mixed",
            "blind_spots": sorted(blind_spots),
            "command": [],
            "exit_code": max(exit_codes) if exit_codes else None,
            "lost_events": sum(int(r.get("lost_events") or 0) for r in runs.values()),
            "events": {},
            "backend_stats": {},
            "config": configs.pop() if len(configs) == 1 else None,
            "baseline": sorted(baseline),
            "names": names or {},
            "runs": runs,
        },
        "tests": {nodeid: tests[nodeid] for nodeid in run_order(
            [list(r.tests) for r in reports])},
        "unattributed": _merge_unattributed(reports),
        "fixtures": dict(sorted(fixtures.items())),
        "destinations": dict(sorted(destinations.items())),
    }
    merged["summary"] = summarize(merged, _merge_incidental(reports))
    return merged
