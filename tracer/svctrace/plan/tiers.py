"""Plans CI tiers from a report: the cheapest tier per test, shards, matrix, summary (pure)."""
from __future__ import annotations

import dataclasses
import heapq
import math
import re
import statistics

from svctrace import __version__
from svctrace.config import Tier
from svctrace.errors import SvctraceError
from svctrace.report.model import (GRANULARITIES, PLAN_SCHEMA, Plan, PlanError, Report,
                                   as_plan, as_report, covering_tier)
from svctrace.words import counted, plural

DEFAULT_DURATION_S = 1.0  # when the report knows no duration at all
# Tier names become file names (<tier>.txt) and CI job names.
_TIER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class TiersError(SvctraceError):
    """Tiers cannot be planned: none configured, bad names, bad granularity or shard count."""


def group_key(nodeid: str, granularity: str) -> str:
    """The unit that must stay together: the test itself, its class, or its file."""
    if granularity == "test":
        return nodeid
    # Parameter ids may contain "::" (test_x[a::b]): split only the part before them.
    parts = nodeid.split("[", 1)[0].split("::")
    if granularity == "file":
        return parts[0]
    # A module-level function belongs to no class: it is its own group.
    return "::".join(parts[:-1]) if len(parts) > 2 else nodeid


def _ordered_tiers(tiers: list[Tier]) -> list[Tier]:
    """Cheapest first: lowest startup, then fewest services, then name."""
    return sorted(tiers, key=lambda t: (t.startup_s, len(set(t.services)), t.name))


def most_complete(tiers: list[Tier]) -> Tier:
    """The most complete tier: most services, then the costliest (it starts most), then name."""
    return min(tiers, key=lambda t: (-len(set(t.services)), -t.startup_s, t.name))


def _check_tiers(tiers: list[Tier], granularity: str) -> None:
    if granularity not in GRANULARITIES:
        raise TiersError(f"granularity {granularity!r}: choose one of {', '.join(GRANULARITIES)}")
    if not tiers:
        raise TiersError("no tiers configured: add [[tool.svctrace.tiers]] tables")
    seen: set[str] = set()
    for tier in tiers:
        if not _TIER_NAME.match(tier.name):
            raise TiersError(f"tier name {tier.name!r}: use letters, digits, '.', '_' or '-' "
                             "(it becomes a file name and a CI job name)")
        if tier.name in seen:
            raise TiersError(f"tier {tier.name!r} is configured twice")
        seen.add(tier.name)


def plan_tiers(report: Report | dict, tiers: list[Tier], granularity: str = "test") -> dict:
    """Put every test of `report` in the cheapest tier whose services cover its needs."""
    _check_tiers(tiers, granularity)
    order = _ordered_tiers(tiers)
    by_name = {t.name: t for t in order}
    fallback = most_complete(tiers)
    tests = as_report(report).tests
    durations = {nodeid: float(t.duration_s) for nodeid, t in sorted(tests.items())
                 if t.ran and isinstance(t.duration_s, (int, float))}
    default = round(statistics.median(durations.values()), 6) if durations else DEFAULT_DURATION_S
    groups: dict[str, list[str]] = {}
    for nodeid in sorted(tests):
        groups.setdefault(group_key(nodeid, granularity), []).append(nodeid)
    assignments: dict[str, str] = {}
    group_tiers: dict[str, str] = {}
    uncovered: dict[str, list[str]] = {}
    moved: list[str] = []  # incomplete groups their needs alone put in a cheaper tier
    for key, members in groups.items():
        # A test that never ran has no observed needs: only the most complete tier is safe.
        unknown = any(not tests[n].ran for n in members)
        # Services proven not needed (svctrace prove) leave a test's needs here.
        needs = set().union(*(tests[n].proven_needs for n in members))
        name = fallback.name if unknown else covering_tier(
            ((t.name, t.services) for t in order), needs)
        # Records lost while a test ran may hide a service it needs: trust no partial
        # answer, the most complete tier is the safe one.
        if any(tests[n].incomplete for n in members) and name not in (None, fallback.name):
            name = fallback.name
            moved += members
        if name is None:
            name = fallback.name
            for nodeid in members:
                missing = set(tests[nodeid].proven_needs) - set(fallback.services)
                if missing:
                    uncovered[nodeid] = sorted(missing)
        tier = by_name[name]
        group_tiers[key] = tier.name
        for nodeid in members:
            assignments[nodeid] = tier.name
    by_tier: dict[str, list[str]] = {t.name: [] for t in order}
    for nodeid, name in assignments.items():
        by_tier[name].append(nodeid)
    return {
        "schema": PLAN_SCHEMA,
        "svctrace_version": __version__,
        "granularity": granularity,
        "tiers": {t.name: {"services": sorted(set(t.services)), "startup_s": t.startup_s,
                           "tests": by_tier[t.name],
                           "duration_s": round(sum(durations.get(n, default)
                                                   for n in by_tier[t.name]), 3)}
                  for t in order},
        "order": [t.name for t in order],
        "fallback": fallback.name,
        "assignments": assignments,
        "durations": durations,
        "default_duration_s": default,
        "uncovered": uncovered,
        **({"incomplete": sorted(moved)} if moved else {}),
        # Lets tier_of place a new test next to its class or file mates without a scan.
        "groups": group_tiers if granularity != "test" else {},
    }


def moved_by_proof(report: Report | dict, tiers: list[Tier], granularity: str = "test") -> int:
    """How many tests the proofs put in a cheaper tier than their observed needs would."""
    report = as_report(report)
    with_proof = plan_tiers(report, tiers, granularity)
    bare = dataclasses.replace(report, tests={n: dataclasses.replace(t, needs_proof={})
                                              for n, t in report.tests.items()})
    without = plan_tiers(bare, tiers, granularity)
    rank = {name: i for i, name in enumerate(with_proof["order"])}
    return sum(1 for n, tier in with_proof["assignments"].items()
               if rank[tier] < rank[without["assignments"][n]])


def incomplete_line(plan: Plan | dict) -> str | None:
    """What the plan did with incomplete tests, in one sentence (None: there were none)."""
    plan = as_plan(plan)
    if not plan.incomplete:
        return None
    n = len(plan.incomplete)
    return (f"{counted(n, 'test')} moved to {plan.fallback} (the most complete tier): "
            f"the backend lost records while {'it' if n == 1 else 'they'} ran, so "
            f"{'its' if n == 1 else 'their'} needs may be incomplete")


def parse_shard(text: str, option: str = "--shard") -> tuple[int, int]:
    """"I/N" (1-based) as (I, N); PlanError saying what is expected."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise PlanError(f"{option} {text!r}: expected I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise PlanError(f"{option} {text!r}: I must be within 1..N")
    return index, count


def _groups(plan: Plan) -> dict[str, str]:
    if plan.groups or "groups" in plan.keys:
        return plan.groups
    if plan.granularity == "test":
        return {}
    return {group_key(n, plan.granularity): t for n, t in plan.assignments.items()}


def tier_of(plan: Plan | dict, nodeid: str) -> str:
    """The plan's tier for a test; a test it does not know joins its group, else the fallback."""
    plan = as_plan(plan)
    tier = plan.assignments.get(nodeid)
    if tier is not None:
        return tier
    if plan.granularity != "test":
        tier = _groups(plan).get(group_key(nodeid, plan.granularity))
        if tier is not None:
            return tier
    return plan.fallback


def shard_assignment(plan: Plan | dict, nodeids: list[str], count: int) -> dict[str, int]:
    """Shard 1..count per test: greedy longest-processing-time on recorded durations.

    Depends only on the set of node ids (not their order), so every xdist worker and every
    CI job computes the same split; at class/file granularity a group stays on one shard.
    """
    if count < 1:
        raise TiersError(f"shard count must be at least 1, got {count}")
    plan = as_plan(plan)
    durations, default = plan.durations, plan.default_duration_s
    units: dict[str, list[str]] = {}
    for nodeid in sorted(set(nodeids)):
        units.setdefault(group_key(nodeid, plan.granularity), []).append(nodeid)
    weighted = sorted(((sum(durations.get(n, default) for n in members), key)
                       for key, members in units.items()), key=lambda u: (-u[0], u[1]))
    loads = [(0.0, shard) for shard in range(1, count + 1)]  # heap: least loaded, lowest index
    result: dict[str, int] = {}
    for weight, key in weighted:
        load, shard = heapq.heappop(loads)
        for nodeid in units[key]:
            result[nodeid] = shard
        heapq.heappush(loads, (load + weight, shard))
    return result


def _units(plan: Plan, tier: str) -> int:
    return len({group_key(n, plan.granularity) for n in plan.tiers[tier].tests})


def matrix(plan: Plan | dict, shards: int | None = None, target_shard_seconds: float = 600) -> dict:
    """A GitHub Actions matrix: one entry per tier × shard.

    Tiers without tests get no job, except the fallback: tests added since the report was
    made land there. Shards per tier: `shards`, or enough for `target_shard_seconds` each,
    never more than the tier has test groups to spread.
    """
    if shards is not None and shards < 1:
        raise TiersError(f"--shards must be at least 1, got {shards}")
    if target_shard_seconds <= 0:
        raise TiersError("target shard seconds must be positive")
    plan = as_plan(plan)
    include = []
    for name in plan.order:
        tier = plan.tiers[name]
        units = _units(plan, name)
        if not units and name != plan.fallback:
            continue
        wanted = shards if shards is not None else \
            math.ceil(tier.duration_s / target_shard_seconds)
        count = max(1, wanted if name == plan.fallback else min(wanted, units))
        for shard in range(1, count + 1):
            include.append({"tier": name, "shard": shard, "shards": count,
                            "services": " ".join(tier.services)})
    return {"include": include}


def _seconds(value: float) -> str:
    if 0 < value < 1:
        return "<1s"
    value = round(value)
    return f"{value // 60}m {value % 60:02d}s" if value >= 60 else f"{value}s"


def startup_estimate(plan: Plan | dict, matrix_: dict, today_jobs: int = 1) -> dict:
    """Service startup of the plan's jobs against today's CI: `today_jobs` jobs that each
    start every service (the fallback tier's). Machine time: test time is the same either
    way (shards spread the tests, they do not shorten them). saved_s < 0 is a loss."""
    if today_jobs < 1:
        raise TiersError(f"today's job count must be at least 1, got {today_jobs}")
    plan = as_plan(plan)
    full = plan.tiers[plan.fallback].startup_s
    planned = sum(plan.tiers[e["tier"]].startup_s for e in matrix_["include"])
    return {"today_jobs": today_jobs, "today_s": today_jobs * full, "fallback_s": full,
            "jobs": len(matrix_["include"]), "planned_s": planned,
            "saved_s": today_jobs * full - planned}


def time_saved_s(plan: Plan | dict, matrix_: dict, today_jobs: int = 1) -> float:
    """Startup seconds the plan saves against today's `today_jobs` full jobs (< 0: costs)."""
    return startup_estimate(plan, matrix_, today_jobs)["saved_s"]


def estimate_text(estimate: dict) -> str:
    """'saves 3m 20s' or 'costs 20s more', as the estimate says."""
    saved = estimate["saved_s"]
    return f"saves {_seconds(saved)}" if saved >= 0 else f"costs {_seconds(-saved)} more"


def startup_line(estimate: dict) -> str:
    """One line: both startups and what the difference is."""
    return (f"{_jobs(estimate['jobs'])} start services for {_seconds(estimate['planned_s'])} "
            f"in all, against {_seconds(estimate['today_s'])} for today's "
            f"{_jobs(estimate['today_jobs'])} starting everything: {estimate_text(estimate)}")


def _jobs(n: int) -> str:
    return counted(n, "job")


def markdown_summary(plan: Plan | dict, matrix_: dict, today_jobs: int = 1) -> str:
    """The job-summary page: tests per tier, services each starts, shards, time saved."""
    plan = as_plan(plan)
    shards = {e["tier"]: e["shards"] for e in matrix_["include"]}
    total = sum(len(t.tests) for t in plan.tiers.values())
    fallback = plan.fallback
    lines = ["## svctrace tiers", "",
             f"{counted(total, 'test')} planned at {plan.granularity} granularity; "
             f"tests not in the report run in **{fallback}** (the most complete tier).",
             "", "| tier | services started | startup | tests | share | test time | shards |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name in plan.order:
        tier = plan.tiers[name]
        count = len(tier.tests)
        share = f"{count / total:.0%}" if total else "-"
        lines.append(f"| {name}{' (fallback)' if name == fallback else ''} "
                     f"| {', '.join(tier.services) or '(none)'} | {_seconds(tier.startup_s)} "
                     f"| {count} | {share} | {_seconds(tier.duration_s)} "
                     f"| {shards.get(name, 0) or '-'} |")
    est = startup_estimate(plan, matrix_, today_jobs)
    lines += ["", f"**Estimated service startup: this plan {estimate_text(est)}** of CI "
              f"machine time. Today: {_jobs(est['today_jobs'])} starting the services of "
              f"{fallback} ({_seconds(est['fallback_s'])} each), "
              f"{_seconds(est['today_s'])} in all; this plan: {_jobs(est['jobs'])} starting "
              f"their tier's services, {_seconds(est['planned_s'])} in all.",
              "", "Assumed: each job starts its tier's services once, taking the tier's "
              "`startup_s`; test time is the same either way; each job's own overhead "
              "(checkout, install) is not counted, and it grows with the number of jobs. "
              "Today's job count: `--today-shards`."]
    if plan.incomplete:
        lines += ["", f"{incomplete_line(plan)}:", ""]
        lines += [f"- `{nodeid}`" for nodeid in plan.incomplete[:20]]
        if len(plan.incomplete) > 20:
            lines.append(f"- … and {len(plan.incomplete) - 20} more (see the plan's "
                         "`incomplete`)")
    if plan.uncovered:
        lines += ["", f"{counted(len(plan.uncovered), 'test')} {plural(len(plan.uncovered), 'need')} "
                  "services no tier starts; they run "
                  f"in {fallback} and may fail there:", ""]
        for nodeid, missing in sorted(plan.uncovered.items())[:20]:
            lines.append(f"- `{nodeid}`: {', '.join(missing)}")
        if len(plan.uncovered) > 20:
            lines.append(f"- … and {len(plan.uncovered) - 20} more (see the plan's "
                         "`uncovered`)")
    return "\n".join(lines) + "\n"


def tier_lists(plan: Plan | dict) -> dict[str, str]:
    """{"<tier>.txt": its node ids, one a line} per tier (an empty tier: an empty text)."""
    plan = as_plan(plan)
    lists = {}
    for name in plan.order:
        if not _TIER_NAME.match(name):  # a hand-edited plan must not write outside its folder
            raise PlanError(f"tier name {name!r} is not a safe file name")
        lists[f"{name}.txt"] = "".join(f"{n}\n" for n in plan.tiers[name].tests)
    return lists
