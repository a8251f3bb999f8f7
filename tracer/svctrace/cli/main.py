"""The `svctrace` command line: the only place that turns errors into messages and exit codes."""
from __future__ import annotations

import sys

import click

from svctrace.capture import CHOICES
from svctrace.cli.common import (EXIT_CODES_HELP, EXIT_DOCTOR_UNUSABLE, EXIT_INPUT,
                                 EXIT_INTERNAL, EXIT_OK, EXIT_USAGE, fail)
from svctrace.errors import SvctraceError


RUN_HELP = """Run COMMAND under a tracer and write the per-test services report.

\b
Examples:
  sudo .venv/bin/svctrace run -- .venv/bin/pytest tests/
  svctrace run --backend inprocess --report r.json -- pytest -n 2 tests/
  svctrace run --backend strace -- python -m pytest tests/test_db.py

Under sudo the command runs as the invoking user (SUDO_UID), not as root, unless --as-root;
the report is always written as that user (a path they may not write is refused).
The exit status is the command's own (128+N if killed by signal N); 2 means svctrace could
not start (bad option/config/backend), 3 means svctrace failed after a successful command.

\b
The guard (root; cgroup v2): --deny kafka,snuba refuses those services at once
(ECONNREFUSED) to the command's whole tree; --allow postgres,redis refuses every other
named service; --guard refuses what a tier of a plan does not start:
  sudo .venv/bin/svctrace run --guard --plan plan.json --tier db -- .venv/bin/pytest tests/
--shadow with any of them refuses nothing and records what would have been refused.

\b
A tier job (svctrace need not be installed in the project's venv):
  sudo .venv/bin/svctrace run --plan plan.json --tier db --shard 1/3 -- .venv/bin/pytest tests/
"""


def _print_version(ctx, _param, value) -> None:
    """--version, computed only when asked: it may run git."""
    if not value or ctx.resilient_parsing:
        return
    from svctrace.cli.version import version_text
    click.echo(f"svctrace, version {version_text()}")   # click's own wording
    ctx.exit()


class _Commands(click.Group):
    """Imports the plan commands' modules (merge, tiers: ~25 ms) only when one of them runs
    or --help lists them, not on every `svctrace run`."""

    LAZY = {"merge": ("plan", "merge_command"), "tiers": ("plan", "tiers_command"),
            "prove": ("prove", "prove_command")}

    def list_commands(self, ctx) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx, name):
        if name in self.LAZY and name not in self.commands:
            import importlib
            module, attr = self.LAZY[name]
            self.add_command(getattr(importlib.import_module(f"svctrace.cli.{module}"), attr),
                             name)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]},
             epilog=EXIT_CODES_HELP)
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_print_version,
              help="Show the version (and the git commit it was built from) and exit.")
def main() -> None:
    """svctrace: which external services does each pytest test really contact?

    \b
    Typical use:
      sudo .venv/bin/svctrace run -- .venv/bin/pytest tests/   # trace, write the report
      svctrace explain svctrace-report.json tests/test_x.py::test_y
      svctrace doctor                                          # which backends work here
    """
    from svctrace.userfiles import act_for, invoking_user
    try:
        # Under sudo every file svctrace writes for the user is written as that user:
        # root is needed for tracing, not for choosing where files go.
        act_for(invoking_user())
    except SvctraceError as exc:
        fail(exc, EXIT_USAGE)


@main.command(help=RUN_HELP, context_settings={"ignore_unknown_options": True,
                                               "allow_interspersed_args": False})
@click.option("--backend", "-b", type=click.Choice(CHOICES), default=None,
              help="tracer to use (default: [tool.svctrace] backend, else auto: ebpf, then "
                   "strace, then inprocess)")
@click.option("--report", "-o", "report_path", metavar="PATH", default=None,
              help="where to write the JSON report (default svctrace-report.json)")
@click.option("--as-root", is_flag=True, help="under sudo, run the command as root too")
@click.option("--config", "config_path", metavar="PYPROJECT", default=None,
              help="pyproject.toml holding [tool.svctrace] (default: nearest one above cwd)")
@click.option("--progress", metavar="SECONDS", type=float, default=60.0, show_default=True,
              help="print a progress line this often (0: never)")
@click.option("--quiet", "-q", is_flag=True, help="no summary at the end")
@click.option("--verbose", "-v", is_flag=True,
              help="a longer summary at the end (blind spots, every service set)")
@click.option("--deny", multiple=True, metavar="SVC[,SVC]",
              help="refuse, in the kernel, every connect and UDP send of the command's tree "
                   "to these services (the service map's names)")
@click.option("--allow", multiple=True, metavar="SVC[,SVC]",
              help="refuse every other named service (baseline services stay allowed; "
                   "destinations no rule names stay allowed)")
@click.option("--guard", "guard_tier", is_flag=True,
              help="refuse what the tier does not start: the tier of --plan/--tier, else "
                   "the command's own --svctrace-plan/--svctrace-tier")
@click.option("--plan", "plan_path", metavar="PLAN", default=None,
              help="run one tier of this plan (svctrace tiers --plan-out): the command's "
                   "pytest keeps only the tier's tests, svctrace installed there or not")
@click.option("--tier", metavar="NAME", default=None,
              help="with --plan: the tier to run (and to guard, with --guard)")
@click.option("--shard", metavar="I/N", default=None,
              help="with --plan/--tier: run shard I of N of the tier (1-based)")
@click.option("--shadow", is_flag=True,
              help="with --deny/--allow/--guard: refuse nothing, record per test what the "
                   "guard would have refused (the same report fields, marked shadow)")
@click.option("--stacks/--no-stacks", default=None,
              help="record the Python call site of each test's first contact with each "
                   "service (ebpf: the process is stopped for a py-spy dump, ~35 ms; "
                   "default: [tool.svctrace] stacks)")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run(backend, report_path, as_root, config_path, progress, quiet, verbose, deny, allow,
        guard_tier, plan_path, tier, shard, shadow, stacks, command) -> None:
    from svctrace.config import load_config
    from svctrace.run.runner import Run
    from svctrace.userfiles import check_writable

    try:
        cfg = load_config(config_path)
        chosen = backend or cfg.backend
        report_path = report_path or cfg.report
        # Refuse a report path the user could not write before the command runs, not after.
        check_writable(report_path, what="the report")
        if chosen not in CHOICES:
            raise SvctraceError(f"{cfg.path}: tool.svctrace.backend {chosen!r} is not one of "
                                f"{', '.join(CHOICES)}")
        guard, plan, selection = None, None, None
        if plan_path or tier or shard:
            plan, selection = _tier_run(plan_path, tier, shard, list(command))
        if deny or allow or guard_tier or shadow:  # else not even imported
            from svctrace.guard.kernel import from_options
            guard, guard_plan = from_options(cfg.service_map(), cfg.baseline, deny, allow,
                                             guard_tier, plan_path, tier, list(command),
                                             shadow)
            plan = plan or guard_plan
        runner = Run(list(command), chosen, report_path, cfg, as_root, progress, guard=guard,
                     stacks=cfg.stacks if stacks is None else stacks, selection=selection)
    except SvctraceError as exc:
        fail(exc, EXIT_USAGE)
    try:
        code = runner.execute()
    except SvctraceError as exc:
        ran = runner.report is not None or getattr(runner, "pid", 0)
        fail(exc, EXIT_INTERNAL if ran else EXIT_USAGE)
    except OSError as exc:
        if runner.report is None:
            fail(str(exc), EXIT_INTERNAL if getattr(runner, "pid", 0) else EXIT_USAGE)
        raise
    if runner.write_error:
        fail(runner.write_error, code or EXIT_INTERNAL)
    if runner.report is not None and not runner.report["summary"]["tests_ran"]:
        _no_test_ran(runner, code)
    elif runner.report is not None and not quiet:
        from svctrace.views.summary import format_summary  # not imported by quiet runs
        click.echo(format_summary(runner.report, runner.report_path, verbose), err=True)
    if runner.report is not None and selection is not None:
        _check_selected(runner.report, plan, tier)
    if runner.report is not None and guard is not None:
        from svctrace.guard.rules import misplaced_lines
        for line in misplaced_lines(runner.report, plan, guard.spec):
            click.echo(f"svctrace: {line}", err=True)
    sys.exit(code)


def _tier_run(plan_path, tier, shard, command: list[str]) -> tuple[dict, dict]:
    """`--plan/--tier [--shard]`, checked before anything runs: (the plan, the environment
    that tells the plugin copied into the command's pytest what to keep)."""
    import os

    from svctrace.contract import ENV_PLAN, ENV_SHARD, ENV_TIER
    from svctrace.guard.rules import plan_from_command
    from svctrace.plan.tiers import parse_shard
    from svctrace.report.files import load_tier
    if not (plan_path and tier):
        raise SvctraceError("--plan and --tier go together (--shard with them): give both")
    if any(plan_from_command(command)):
        raise SvctraceError("the tier is given twice: keep --plan/--tier, or the command's "
                            "--svctrace-plan/--svctrace-tier, not both")
    plan = load_tier(plan_path, tier)
    if shard:
        parse_shard(shard)
    return plan, {ENV_PLAN: os.path.abspath(plan_path), ENV_TIER: tier,
                  **({ENV_SHARD: shard} if shard else {})}


def _check_selected(report: dict, plan: dict, tier: str) -> None:
    """A pytest whose own, older svctrace plugin ignores --plan/--tier runs every test:
    say so rather than let a tier job pass on the wrong tests."""
    from svctrace.plan.tiers import tier_of
    outside = [n for n, t in report["tests"].items() if t.get("ran") and tier_of(plan, n) != tier]
    if outside:
        from svctrace.words import counted
        tests = counted(len(outside), "test")
        click.echo(f"svctrace: WARNING: {tests} outside tier {tier!r} ran (e.g. "
                   f"{outside[0]}): the command's pytest did not select the tier (an "
                   "svctrace plugin older than this svctrace, installed in its environment, "
                   "ignores --plan/--tier: upgrade or uninstall it there)", err=True)


def _no_test_ran(runner, code: int) -> None:
    """No test ran: one sentence (what happened, where the report went), not a summary of
    nothing; the plugin hint only where the command ran but no pytest wrote markers."""
    from svctrace.join.collect import NO_MARKERS
    from svctrace.views.summary import SHELL_EXITS, no_test_line
    markers = NO_MARKERS not in runner.report["run"]["notes"]
    line = no_test_line(runner.command, code, runner.report_path, runner.report_written,
                        markers)
    click.echo(f"svctrace: {line}", err=True)
    if not markers and code not in SHELL_EXITS and "before running" not in line:
        click.echo(f"svctrace: {NO_MARKERS}", err=True)


@main.command()
def doctor() -> None:
    """Say, for each backend, whether it is usable here and, if not, what to fix."""
    from svctrace.cli.doctor import doctor_lines

    ok = True
    for line, good in doctor_lines():
        ok &= good
        click.echo(line)
    sys.exit(EXIT_OK if ok else EXIT_DOCTOR_UNUSABLE)


def _report_view(render, *args) -> None:
    """Load a report, print render(report, *args); input errors exit 1 with one line."""
    from svctrace.report.files import read_report
    try:
        click.echo(render(read_report(args[0]), *args[1:]))
    except SvctraceError as exc:
        fail(exc, EXIT_INPUT)


@main.command()
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("--verbose", "-v", is_flag=True,
              help="also the backend's blind spots, every service set, each traffic "
                   "bucket outside tests and the event counts")
@click.option("--markdown", is_flag=True,
              help="Markdown for a CI job summary (e.g. >> \"$GITHUB_STEP_SUMMARY\")")
@click.option("--plan", "plan_path", metavar="PLAN", default=None,
              help="with --markdown, for a guarded tier run: the tiers plan, to name the "
                   "tier each refused test belongs in")
def summary(report, verbose, markdown, plan_path) -> None:
    """Print the summary of a report (as at the end of `svctrace run`)."""
    from svctrace.views.summary import format_summary, markdown_summary
    if markdown:
        plan = None
        if plan_path:
            from svctrace.report.files import load_plan
            try:
                plan = load_plan(plan_path)
            except SvctraceError as exc:
                fail(exc, EXIT_INPUT)
        _report_view(lambda data: markdown_summary(data, report, plan).rstrip("\n"), report)
    else:
        _report_view(lambda data: format_summary(data, report, verbose, _moved(data)),
                     report)


def _moved(data) -> int | None:
    """Tests moved to a cheaper tier by proofs, when the report has proofs and the nearest
    pyproject.toml configures tiers (else None: the summary says nothing of tiers)."""
    if not any(t.needs_proof for t in data.tests.values()):
        return None
    from svctrace.config import load_config
    from svctrace.plan.tiers import moved_by_proof
    try:
        tiers = load_config(None).tiers
        return moved_by_proof(data, list(tiers)) if tiers else None
    except SvctraceError:
        return None


@main.command()
@click.argument("report", type=click.Path(dir_okay=False))
@click.argument("tests", nargs=-1)
@click.option("-k", "keyword", metavar="EXPR", default=None,
              help="tests whose node id matches EXPR: words (substrings) with and/or/not, "
                   "as pytest -k")
@click.option("--json", "as_json", is_flag=True, help="the evidence as JSON, for tools")
def explain(report, tests, keyword, as_json) -> None:
    """Why does each test touch each of its services? Evidence per test.

    TESTS are node ids, node id prefixes, or files and folders (every test in them).

    \b
    Examples:
      svctrace explain svctrace-report.json "tests/test_orders.py::test_save"
      svctrace explain svctrace-report.json tests/test_orders.py
      svctrace explain svctrace-report.json -k "kafka and not mock" --json
    """
    import json as json_

    from svctrace.views.explain import explain_data, explain_text, select_tests

    def render(data: dict) -> str:
        chosen = select_tests(data, tests, keyword)
        if as_json:
            return json_.dumps({"schema": "svctrace-explain/1", "report": report,
                                "tests": [explain_data(data, n) for n in chosen]}, indent=1)
        return explain_text(data, chosen)
    _report_view(render, report)


@main.command()
@click.argument("report", type=click.Path(dir_okay=False))
def drift(report) -> None:
    """Hidden dependencies (observed, not declared) and stale declarations, by file."""
    from svctrace.views.explain import drift_text
    _report_view(lambda data: drift_text(data)[0], report)


def _services_option(name: str, text: str):
    return click.option(f"--{name}", multiple=True, metavar="SVC[,SVC]", help=text)


@main.command("list", epilog="""\b
Examples:
  svctrace list svctrace-report.json --needs kafka
  pytest $(svctrace list svctrace-report.json --service kafka,clickhouse)
  svctrace list r.json --inherited postgres --denied redis

\b
Several services in one option: any of them; several options: all of
them. When no test matches, nothing is printed and the exit status is 1
(so `pytest $(svctrace list ...)` never runs the whole suite by accident).""")
@click.argument("report", type=click.Path(dir_okay=False))
@_services_option("service", "tests that contacted SVC in their own windows (observed)")
@_services_option("needs", "tests that need SVC: observed, inherited, declared or refused "
                           "by the guard, less the baseline (what tiers plan on)")
@_services_option("inherited", "tests that inherit SVC from a wider-scoped fixture")
@_services_option("denied", "tests that tried SVC and were refused by the guard")
@click.option("--config", "config_path", metavar="PYPROJECT", default=None,
              help="pyproject.toml whose service map names are known too (default: the "
                   "nearest one)")
def list_command(report, service, needs, inherited, denied, config_path) -> None:
    """Print the node ids of the tests related to a service, one per line, in run order."""
    from svctrace.config import load_config
    from svctrace.report.files import load_report
    from svctrace.report.rejudge import Rejudge
    from svctrace.views.listing import list_tests, nothing_text

    def names(values: tuple[str, ...]) -> list[str]:
        return [n.strip() for v in values for n in v.split(",") if n.strip()]

    wanted = {"service": names(service), "needs": names(needs),
              "inherited": names(inherited), "denied": names(denied)}
    try:
        cfg = load_config(config_path)
        smap = cfg.service_map()
        # named as `svctrace tiers` names them: by the current rules
        data = Rejudge(smap).report(load_report(report), set(cfg.baseline) if cfg.path
                                    else None)
        chosen = list_tests(data, wanted, {r.name for r in smap.rules})
    except SvctraceError as exc:
        fail(exc)
    if not chosen:
        click.echo(f"svctrace list: {nothing_text(wanted)}", err=True)
        sys.exit(EXIT_INPUT)
    click.echo("\n".join(chosen))


@main.command("html", epilog="""\b
Examples:
  svctrace html svctrace-report.json -o svctrace-html
  svctrace html merged.json -o site --plan plan.json --compare last-night.json

\b
The page is one file, DIR/index.html, with everything inlined: it opens
from file:// or a CI artifact, no server and nothing fetched. Filters
live in the address (#service=kafka&outcome=failed&q=orders).""")
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, metavar="DIR",
              help="folder to write index.html into (created if missing)")
@click.option("--plan", "plan_path", metavar="PLAN", default=None,
              help="a tiers plan (svctrace tiers --plan-out): each test's tier, and the "
                   "tests that keep a file or class out of a cheaper tier")
@click.option("--compare", "old_path", metavar="OLD", default=None,
              help="an older report: what changed per test")
@click.option("--title", default=None, help="the page's title")
def html_command(report, output, plan_path, old_path, title) -> None:
    """Write a static, self-contained HTML report of REPORT: a tests x services matrix."""
    import os

    from svctrace.report.files import read_plan, read_report
    from svctrace.userfiles import make_dir, write_file
    from svctrace.views.html import build_page
    from svctrace.words import counted
    try:
        data = read_report(report)
        plan = read_plan(plan_path) if plan_path else None
        old = read_report(old_path) if old_path else None
    except SvctraceError as exc:
        fail(exc, EXIT_INPUT)
    page = build_page(data, plan, old, title)
    target = os.path.join(output, "index.html")
    try:
        make_dir(output, what="the HTML report's folder")
        write_file(target, page.encode("utf-8"), what="the HTML report")
    except SvctraceError as exc:
        fail(exc, EXIT_USAGE)
    click.echo(f"svctrace html: {counted(len(data.tests), 'test')}, {len(page) // 1024} KiB "
               f"-> {target}")



def entry() -> None:
    """The `svctrace` program (console script and `python -m svctrace`): main(), then leave
    without tearing the interpreter down. After `svctrace run` of 2,000 tests, freeing the
    attribution's objects one by one cost the runner ~0.1 s of CPU (a fifth of its own),
    for memory the kernel takes back at once. atexit handlers still run; output is
    flushed. (main itself stays an ordinary click group: tests invoke it in-process.)"""
    import atexit
    import os
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): Python prints it, exits 1
        sys.stderr.write(f"{code}\n")
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (svctrace ... | head): nothing to save
            pass
    os._exit(code & 0xFF)  # as the kernel truncates sys.exit(N)
