"""`svctrace merge` and `svctrace tiers`: from shard reports to a tiered CI plan."""
from __future__ import annotations

import json
from pathlib import Path

import click

from svctrace import REPORT_SCHEMA
from svctrace.cli.common import EXIT_USAGE, fail
from svctrace.config import load_config
from svctrace.errors import SvctraceError
from svctrace.report.merge import merge_reports
from svctrace.report.rejudge import Rejudge
from svctrace.report.jsonfile import write_atomic
from svctrace.userfiles import append_file, check_writable
from svctrace.words import counted
from svctrace.report.files import load_report, write_lists, write_plan, write_report
from svctrace.report.model import GRANULARITIES, Plan, Report
from svctrace.plan.tiers import (incomplete_line, markdown_summary, matrix, most_complete,
                                 moved_by_proof, plan_tiers, startup_estimate, startup_line)

GITHUB_MATRIX_LIMIT = 256  # GitHub Actions refuses a matrix with more jobs than this

TIERS_EXAMPLE = """\
[[tool.svctrace.tiers]]
name = "db"
services = ["postgres", "redis"]
startup_s = 20

[[tool.svctrace.tiers]]
name = "full"
services = ["postgres", "redis", "kafka", "clickhouse", "snuba"]
startup_s = 280"""


@click.command("merge", epilog="""\b
Examples:
  svctrace merge -o svctrace-report.json reports/report-*.json
  svctrace merge -o all.json nightly.json shard-3-rerun.json

\b
Evidence is unioned per test: a test counts as run if any input ran it
(its "ran_in" lists those runs), counts take the maximum, and a test
only collected in one input never hides what another input observed.
The same report given twice counts once. The output is a normal
report: it can be merged again, or given to `svctrace tiers`.""")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the merged report.")
@click.option("--allow-mixed", is_flag=True,
              help="Merge reports of different backends (the result says backend 'mixed').")
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False))
def merge_command(output: str, allow_mixed: bool, reports: tuple[str, ...]) -> None:
    """Combine reports from many shards or machines into one report."""
    try:
        check_writable(output)  # before reading inputs: fail fast, write nothing
        loaded = [load_report(path) for path in reports]
        merged = merge_reports(loaded, allow_mixed=allow_mixed)
        write_report(merged, output)
    except SvctraceError as exc:
        fail(exc)
    summary = merged["summary"]
    click.echo(f"svctrace merge: {counted(len(reports), 'input')}, "
               f"{counted(len(merged['run']['runs']), 'run')}, "
               f"{counted(summary['tests_ran'], 'test')} ran / {summary['tests']} collected, "
               f"backend {merged['run']['backend']} -> {output}")


def _write_json(data: dict, path: str, compact: bool = False) -> None:
    # The matrix goes into $GITHUB_OUTPUT as `matrix=<json>`: it must be one line.
    text = json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=1)
    write_atomic(text + "\n", path)


@click.command("tiers", epilog=f"""\b
Examples:
  svctrace tiers svctrace-report.json --plan-out plan.json \\
      --matrix-out matrix.json --summary-out "$GITHUB_STEP_SUMMARY"
  svctrace tiers svctrace-report.json --granularity class --lists-dir tiers/
  svctrace tiers --one-tier --shards 4 --plan-out classify-plan.json

\b
Tiers come from pyproject.toml:
{TIERS_EXAMPLE.replace(chr(10) * 2, chr(10))}

\b
Then, in each CI job, start only the tier's services and run
  pytest --svctrace-plan plan.json --svctrace-tier db --svctrace-shard 1/3

Without REPORT (or with --one-tier) every test goes to the most complete
tier: the plan for a first, classifying run of the whole suite.""")
@click.argument("report", required=False, type=click.Path(dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="pyproject.toml with [[tool.svctrace.tiers]] (default: the nearest one).")
@click.option("--granularity", type=click.Choice(GRANULARITIES), default="test",
              show_default=True,
              help="Keep each class or file in one tier (the one its most demanding "
                   "test needs) and on one shard.")
@click.option("--one-tier", is_flag=True,
              help="Plan everything into the most complete tier (a full classifying run, "
                   "still sharded by the report's durations).")
@click.option("--plan-out", type=click.Path(dir_okay=False),
              help="Write the plan (JSON) for pytest --svctrace-plan.")
@click.option("--lists-dir", type=click.Path(file_okay=False),
              help="Write one <tier>.txt node-id list per tier into this directory.")
@click.option("--matrix-out", type=click.Path(dir_okay=False),
              help="Write the GitHub Actions matrix (one-line JSON: tier, shard, shards, "
                   "services).")
@click.option("--summary-out", type=click.Path(dir_okay=False),
              help="Append the Markdown summary here (e.g. $GITHUB_STEP_SUMMARY); "
                   "default: print it.")
@click.option("--shards", type=click.IntRange(min=1),
              help="Shards per tier (default: from --target-shard-seconds).")
@click.option("--target-shard-seconds", type=click.FloatRange(min=0, min_open=True),
              default=600, show_default=True,
              help="Without --shards: split each tier so a shard runs about this long.")
@click.option("--today-shards", type=click.IntRange(min=1), default=1, show_default=True,
              help="How many jobs run the whole suite today, each starting every service: "
                   "the baseline of the startup estimate.")
def tiers_command(report: str | None, config_path: str | None, granularity: str,
                  one_tier: bool, plan_out: str | None, lists_dir: str | None,
                  matrix_out: str | None, summary_out: str | None, shards: int | None,
                  target_shard_seconds: float, today_shards: int) -> None:
    """Put every test in the cheapest CI tier whose services cover its needs."""
    try:
        cfg = load_config(config_path)
        if not cfg.tiers:
            where = cfg.path or "pyproject.toml"
            fail(f"no tiers configured in {where}; add for example:\n\n{TIERS_EXAMPLE}",
                 EXIT_USAGE)
        raw = load_report(report) if report else {"schema": REPORT_SCHEMA, "tests": {}}
        # Rules added since the run (a name for an address) count now, not at the next run.
        judged = Rejudge(cfg.service_map())
        data = Report.from_dict(judged.report(raw, set(cfg.baseline) if cfg.path else None))
        tiers = list(cfg.tiers)
        # Every output checked before any is written: no plan without its matrix.
        check_writable(*[p for p in (plan_out, matrix_out, summary_out) if p],
                       *[Path(lists_dir, f"{t.name}.txt") for t in tiers if lists_dir])
        if one_tier:
            tiers = [most_complete(tiers)]
        plan = Plan.from_dict(plan_tiers(data, tiers, granularity))
        jobs = matrix(plan, shards, target_shard_seconds)
        summary = markdown_summary(plan, jobs, today_shards)
        estimate = startup_estimate(plan, jobs, today_shards)
        if plan_out:
            write_plan(plan, plan_out)
        if matrix_out:
            _write_json(jobs, matrix_out, compact=True)
        if lists_dir:
            write_lists(plan, lists_dir)
        if summary_out:
            # Append: $GITHUB_STEP_SUMMARY may already hold other steps' text.
            append_file(summary_out, summary.encode())
    except SvctraceError as exc:
        fail(exc)
    if not summary_out:
        click.echo(summary, nl=False)
    if not report:
        click.echo(f"svctrace tiers: no report given: every test goes to tier "
                   f"{plan.fallback!r}", err=True)
    if len(jobs["include"]) > GITHUB_MATRIX_LIMIT:
        click.echo(f"svctrace tiers: warning: {len(jobs['include'])} jobs exceed GitHub's "
                   f"matrix limit of {GITHUB_MATRIX_LIMIT}; raise --target-shard-seconds",
                   err=True)
    for line in judged.lines():
        click.echo(f"svctrace tiers: {line}", err=True)
    counts = ", ".join(f"{name} {len(plan.tiers[name].tests)}" for name in plan.order)
    click.echo(f"svctrace tiers: {counts}; {startup_line(estimate)}", err=True)
    if incomplete_line(plan):
        click.echo(f"svctrace tiers: {incomplete_line(plan)}", err=True)
    if any(t.needs_proof for t in data.tests.values()):  # the plan used needs less what `svctrace prove` proved not needed
        moved = moved_by_proof(data, tiers, granularity)
        click.echo(f"svctrace tiers: {counted(moved, 'test')} moved to a cheaper tier because "
                   "of proof", err=True)
