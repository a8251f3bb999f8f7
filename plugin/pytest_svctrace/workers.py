"""xdist support, registered only when xdist is loaded (pytest-cov's pattern): what a worker
gets from the controller (workerinput) and what it sends back (workeroutput)."""
from __future__ import annotations

import pytest

OWNER_KEY = "svctrace_owner"      # workerinput: pid of the pipe's owner (the controller)
RECORDS_KEY = "svctrace_records"  # workeroutput: a standalone worker's records, as wire lines
NOTES_KEY = "svctrace_notes"      # workeroutput: the worker's notes (degraded tracing)


class Controller:
    """The controller's side: owner pid out, notes and standalone records back."""

    def __init__(self, tracer, owner_pid: str | None, standalone=None) -> None:
        self.tracer = tracer
        self.owner_pid = owner_pid
        self.standalone = standalone

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node) -> None:
        if self.owner_pid:
            node.workerinput[OWNER_KEY] = self.owner_pid

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        output = getattr(node, "workeroutput", None) or {}
        self.tracer.notes.merge(output.get(NOTES_KEY))
        if self.standalone is not None:
            self.standalone.add_worker_lines(output.get(RECORDS_KEY, ()))


def send_back(config: pytest.Config, key: str, value) -> None:
    """On a worker, put value in workeroutput (sent when the worker's session ends)."""
    output = getattr(config, "workeroutput", None)
    if output is not None:
        output[key] = value
