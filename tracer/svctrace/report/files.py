"""Reports, plans and tier lists on disk: the file side of report.model and plan.tiers.

Every write is atomic and, under sudo, made as the invoking user (userfiles)."""
from __future__ import annotations

import os
from pathlib import Path

from svctrace.errors import SvctraceError
from svctrace.report.jsonfile import read_versioned, write_atomic
from svctrace.report.model import (PLAN_SCHEMA, REPORT_SCHEMA, Plan, PlanError, Report,
                                   ReportError, as_plan, report_text)


def read_report(path: str | os.PathLike) -> Report:
    data = read_versioned(path, REPORT_SCHEMA, "report", ReportError)
    return Report.from_dict(data, f"report {path}")


def load_report(path: str | os.PathLike) -> dict:
    """The report's JSON object, checked by the model (read_report gives the model)."""
    return read_report(path).to_dict()


def write_report(report: Report | dict, path: str | os.PathLike) -> Path:
    """Write atomically: a reader never sees half a report, a crash never leaves one."""
    return write_atomic(report_text(report), path)


def _holds_report(path: str | os.PathLike) -> bool:
    """A regular file holding a report (read as the user): what a run of no test keeps.
    Anything else there (a planted link, a stranger's file) goes to the write, which
    refuses it as it refuses any output path."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        read_report(path)
    except SvctraceError:
        return False
    return True


def write_run_report(report: Report | dict, path: str | os.PathLike) -> bool:
    """Write a run's report, unless no test ran and a report is already there: a typo'd
    command must not replace the last good report with an empty one. True if written."""
    summary = report.summary if isinstance(report, Report) else report.get("summary") or {}
    if not summary.get("tests_ran") and _holds_report(path):
        return False
    write_report(report, path)
    return True


def read_plan(path: str | os.PathLike) -> Plan:
    data = read_versioned(path, PLAN_SCHEMA, "plan", PlanError,
                          "write one with `svctrace tiers --plan-out`")
    return Plan.from_dict(data, f"plan {path}")


def load_plan(path: str | os.PathLike) -> dict:
    """The plan's JSON object, checked by the model; `uncovered` always present."""
    plan = read_plan(path).to_dict()
    plan.setdefault("uncovered", {})
    return plan


def load_tier(path: str | os.PathLike, tier: str, option: str = "--tier") -> dict:
    """The plan at `path`, which must have `tier` (a tier run: `svctrace run --plan --tier`,
    `pytest --svctrace-plan --svctrace-tier`, the guard of one)."""
    plan = load_plan(path)
    if tier not in plan["tiers"]:
        raise PlanError(f"{option} {tier!r}: the plan {path} has tiers "
                        f"{', '.join(plan['tiers'])}")
    return plan


def write_plan(plan: Plan | dict, path: str | os.PathLike) -> Path:
    return write_atomic(as_plan(plan).dump(), path)


def write_lists(plan: Plan | dict, directory: str | os.PathLike) -> list[Path]:
    """One `<tier>.txt` per tier, a node id per line (empty tiers get an empty file)."""
    folder = Path(directory)
    # Atomic, and under sudo as the invoking user (who also creates the folder).
    from svctrace.plan.tiers import tier_lists  # a run writes no plan: not at its start
    return [write_atomic(text, folder / name) for name, text in tier_lists(plan).items()]
