"""`svctrace prove`: from "uses" to "needs", proven by re-runs with each service refused."""
from __future__ import annotations

import click

from svctrace.capture import CHOICES
from svctrace.cli.common import EXIT_INPUT, EXIT_USAGE, fail
from svctrace.errors import SvctraceError

PROVE_HELP = """Prove, per test, which services it needs: re-run the tests that touched each
service with that service refused by the guard, beside a control run with nothing refused.

\b
Examples:
  sudo .venv/bin/svctrace prove svctrace-report.json -o proven.json -- .venv/bin/pytest tests/
  sudo .venv/bin/svctrace prove r.json -o p.json --services redis --jobs 2 -- pytest -n 2 tests/

REPORT comes from `svctrace run` of the same COMMAND. Per service, the tests that touched
it run as one pytest process with it refused, and as one with nothing refused (the
control). PROVEN is REPORT plus, per test, needs_proof (service: needed, not_needed or
unproven) and proof (the verdict's reason, both runs' outcomes, the first refused contact).
`svctrace tiers` then plans needs minus the services proven not needed. Needs root and
cgroup v2 (the guard); Ctrl-C writes the proofs gathered so far.
"""


@click.command("prove", help=PROVE_HELP,
               context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": True})
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="where to write the report with proofs (never REPORT itself)")
@click.option("--services", multiple=True, metavar="SVC[,SVC]",
              help="prove only these services (default: every service a test touched)")
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=1, show_default=True,
              help="re-runs at a time (each is its own pytest process and guard)")
@click.option("--backend", "-b", type=click.Choice(CHOICES), default=None,
              help="tracer of the re-runs (default: REPORT's)")
@click.option("--config", "config_path", metavar="PYPROJECT", default=None,
              help="pyproject.toml holding [tool.svctrace] (default: nearest one above cwd)")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def prove_command(report, output, services, jobs, backend, config_path, command) -> None:
    import os

    from svctrace.report.files import write_report
    from svctrace.report.model import ReportError
    from svctrace.run.prove import Prover, timing_line
    from svctrace.userfiles import check_writable

    def log(text: str) -> None:
        click.echo(f"svctrace: {text}", err=True)

    names = [s.strip() for v in services for s in v.split(",") if s.strip()] or None
    try:
        if os.path.abspath(output) == os.path.abspath(report):
            raise SvctraceError(f"-o {output} is REPORT itself: prove never overwrites the "
                                "traced run's report; give another path")
        check_writable(output, what="the proven report")
        prover = Prover(report, list(command), names, jobs, backend, config_path, log)
        prover.check_guard()
    except ReportError as exc:
        fail(exc, EXIT_INPUT)
    except SvctraceError as exc:
        fail(exc, EXIT_USAGE)
    try:
        proven = prover.execute()
    except SvctraceError as exc:
        fail(exc, EXIT_INPUT)
    try:
        write_report(proven, output)
    except SvctraceError as exc:
        fail(exc, EXIT_USAGE)
    from svctrace.views.summary import proof_lines
    for line in proof_lines(proven, verbose=False):
        click.echo(line, err=True)
    log(timing_line(proven) + f" -> {output}")
    raise SystemExit(130 if proven["run"]["proof"]["interrupted"] else 0)
