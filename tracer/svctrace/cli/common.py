"""What every `svctrace` command shares: exit codes and the one way to fail.

The CLI is the only place that turns svctrace's exceptions into a sentence and an exit
code (STYLE.md); both command modules use `fail`, nothing else exits on an error.
"""
from __future__ import annotations

import sys

import click

from svctrace.errors import SvctraceError

EXIT_OK = 0
EXIT_INPUT = 1     # a report or plan given to a command is missing, unreadable, of another
                   # schema, or lacks what was asked for (a node id)
EXIT_DOCTOR_UNUSABLE = 1  # `svctrace doctor`: the preferred (eBPF) backend is unusable
EXIT_USAGE = 2     # bad option, configuration, backend or output path: nothing was done
EXIT_INTERNAL = 3  # `svctrace run`: svctrace failed after the command succeeded

EXIT_CODES_HELP = """\b
Exit status:
  0  success (svctrace run: the command's own status, 128+N if signal N killed it)
  1  an input report or plan is missing, unreadable or of another schema, or
     lacks the node id asked for; doctor: the eBPF backend is unusable here
  2  bad option, configuration, backend or output path: nothing was done
  3  svctrace run: svctrace failed after the command succeeded (e.g. report)"""


def exit_code_for(exc: SvctraceError) -> int:
    """Input problems (what the user gave to read) exit 1; the rest is usage (2)."""
    from svctrace.report.merge import MergeError
    from svctrace.report.model import PlanError, ReportError
    from svctrace.userfiles import OutputError, UserFileError
    if isinstance(exc, OutputError):  # a refused output path: nothing was done
        return EXIT_USAGE
    if isinstance(exc, (MergeError, ReportError, PlanError, UserFileError)):
        return EXIT_INPUT
    return EXIT_USAGE


def fail(exc: SvctraceError | str, code: int | None = None) -> None:
    """One sentence on stderr, then exit: `code`, else the code for this kind of error."""
    click.echo(f"svctrace: error: {exc}", err=True)
    if code is None:
        code = exit_code_for(exc) if isinstance(exc, SvctraceError) else EXIT_USAGE
    sys.exit(code)
