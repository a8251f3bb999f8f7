"""pytest plugin: phase markers for svctrace, and standalone in-process tracing.

Inert unless enabled: by `svctrace run` (environment SVCTRACE_PIPE), by
`pytest --svctrace-report PATH` or the `svctrace_report` ini setting. A tracing failure
never fails a user's test.
"""
from __future__ import annotations

import os
import sys
import time

import pytest

from pytest_svctrace import owner, workers
from pytest_svctrace.markers import Tracer
from pytest_svctrace.sinks import MemorySink, PipeSink
from svctrace.contract import (ENV_BACKEND, ENV_OWNER, ENV_PIPE, ENV_STACKS,
                               progress_path)
from svctrace.userfiles import UserFileError, check_writable

STATE = pytest.StashKey[Tracer]()
PASSIVE = pytest.StashKey[PipeSink]()  # a nested pytest's sink for the in-process backend
CLAIMED = pytest.StashKey[bool]()  # this config made its process the pipe's owner


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("svctrace", "svctrace: which services each test contacts")
    group.addoption("--svctrace-report", metavar="PATH", default=None,
                    help="trace this run in-process (no root needed; blind to C-library "
                         "sockets such as libpq) and write the svctrace JSON report to PATH")
    group.addoption("--svctrace-no-summary", action="store_true", default=False,
                    help="do not print the svctrace summary at the end of the run")
    parser.addini("svctrace_report", "write the standalone report here on every run, as "
                  "--svctrace-report does (`-o svctrace_report=` turns it off for one run)",
                  default=None)
    from pytest_svctrace import select
    select.addoption(group)


class Progress:
    """Prints `svctrace run`'s progress line between tests with pytest's own terminal
    writer, on a line of its own (the runner leaves it in a file next to the pipe)."""

    def __init__(self, config: pytest.Config, path: str) -> None:
        self.config, self.path, self.next_check = config, path, 0.0

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logfinish(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + 1.0  # one open() a second at most, not one per test
        try:
            with open(self.path, encoding="utf-8") as source:
                text = source.read().strip()
            os.unlink(self.path)  # taken: the runner prints nothing itself
        except OSError:
            return
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None or not text:
            return
        writer = getattr(reporter, "_tw", None)
        # write_line ends a line only when a file name opened it: under -q the dots run
        # without one, so end the open line by its width (pytest's own count of it).
        if writer is not None and getattr(writer, "width_of_current_line", 0):
            writer.line()
        reporter.write_line(text)


def _inprocess_install(sink) -> None:
    from svctrace.capture import inprocess
    # svctrace run --stacks: stacks taken in the patched call (records, not events: no fold)
    inprocess.install(sink.event, sink if os.environ.get(ENV_STACKS) == "1" else None)


def _open_pipe(pipe: str):
    try:
        return PipeSink(pipe)
    except OSError as exc:
        # One line, not a warning: under -W error a warning here fails the user's run.
        sys.stderr.write(f"svctrace: cannot open the marker pipe {pipe}: {exc.strerror}; "
                         "this pytest process is not traced\n")
        return None


def _passive(config: pytest.Config, pipe: str) -> None:
    """A nested pytest under the in-process backend: no markers, but its socket events
    and its ancestry, so its traffic is charged to the owner's test that started it."""
    sink = _open_pipe(pipe)
    if sink is None:
        return
    for record in owner.ancestry(os.environ[ENV_OWNER]):
        sink(record, urgent=False)
    sink.flush()  # the links first: events that follow are batched
    config.stash[PASSIVE] = sink
    _inprocess_install(sink)


def _check_report_path(config: pytest.Config, path: str) -> None:
    """One sentence before the run rather than a traceback after it."""
    if hasattr(config, "workerinput"):
        return  # its controller checked
    try:
        check_writable(path, what="the report")
    except UserFileError as exc:
        where = ("--svctrace-report" if config.getoption("svctrace_report")
                 else "svctrace_report (ini)")
        raise pytest.UsageError(f"{where} {path}: {exc.reason}") from None


def pytest_configure(config: pytest.Config) -> None:
    from pytest_svctrace import select
    config.pluginmanager.register(select, "svctrace-select")
    pipe = os.environ.get(ENV_PIPE)
    # The ini setting enables it on every run; `-o svctrace_report=` turns that off.
    report = config.getoption("svctrace_report") or config.getini("svctrace_report") or None
    role = owner.role(config)
    if role != "nested":
        select.take_from_run(config)  # before claiming: the role is read from the env
    if pipe and role == "nested":
        # A pytest run inside a test of the owner: its node ids are not the run's. In the
        # owner's own process (pytester in process) the owner's patch already sees it.
        if (not report and os.environ.get(ENV_BACKEND) == "inprocess"
                and os.environ.get(ENV_OWNER) != str(os.getpid())):
            _passive(config, pipe)
        pipe = None
        if not report:
            return
    if pipe:
        sink = _open_pipe(pipe)
        if sink is None:
            return
        inprocess = os.environ.get(ENV_BACKEND) == "inprocess"
        if role == "owner":
            owner.claim()
            config.stash[CLAIMED] = True
            config.pluginmanager.register(Progress(config, progress_path(pipe)),
                                          "svctrace-progress")
    elif report:
        _check_report_path(config, report)
        sink, inprocess = MemorySink(), True
    else:
        return
    tracer = Tracer(config, sink, inprocess)
    config.stash[STATE] = tracer
    config.pluginmanager.register(tracer, "svctrace-tracer")
    standalone = None
    if not pipe:
        from pytest_svctrace.standalone import StandaloneReport
        standalone = StandaloneReport(config, tracer, os.path.abspath(report), report)
        config.pluginmanager.register(standalone, "svctrace-standalone")
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        claimed = str(os.getpid()) if config.stash.get(CLAIMED, False) else None
        config.pluginmanager.register(workers.Controller(tracer, claimed, standalone),
                                      "svctrace-xdist")
    if inprocess:
        _inprocess_install(sink)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    tracer = session.config.stash.get(STATE, None)
    if tracer:
        tracer.session_start()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus):
    tracer = session.config.stash.get(STATE, None)
    yield
    if tracer:
        tracer.session_end()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    tracer = config.stash.get(STATE, None)
    sink = tracer.sink if tracer else config.stash.get(PASSIVE, None)
    if sink is None:
        return
    if tracer is None or tracer.inprocess:
        from svctrace.capture import inprocess
        inprocess.uninstall()
    try:
        sink.close()
    except Exception:
        pass
    del config.stash[STATE if tracer else PASSIVE]
    if config.stash.get(CLAIMED, False):
        owner.release()


def is_enabled(config: pytest.Config) -> bool:
    return config.stash.get(STATE, None) is not None

