"""pytest plugin: phase markers for svctrace, and standalone in-process tracing.

Inert unless enabled: by `svctrace run` (environment SVCTRACE_PIPE) or by
`pytest --svctrace-report PATH`. A tracing failure never fails a user's test.
"""
from __future__ import annotations

import os
import time
import warnings

import pytest

from pytest_svctrace import owner
from pytest_svctrace.sinks import MemorySink, PipeSink
from svctrace.contract import ENV_BACKEND, ENV_OWNER, ENV_PIPE
from svctrace.events import FixtureMarker, Marker, TestInfo

STATE = pytest.StashKey["Tracer"]()
PASSIVE = pytest.StashKey[PipeSink]()  # a nested pytest's sink for the in-process backend
CLAIMED = pytest.StashKey[bool]()  # this config made its process the pipe's owner


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("svctrace", "svctrace: which services each test contacts")
    group.addoption("--svctrace-report", metavar="PATH", default=None,
                    help="trace this run in-process (no root needed; blind to C-library "
                         "sockets such as libpq) and write the svctrace JSON report to PATH")
    group.addoption("--svctrace-no-summary", action="store_true", default=False,
                    help="do not print the svctrace summary at the end of the run")
    parser.addini("svctrace_report", "default report path for --svctrace-report", default=None)
    from pytest_svctrace import select
    select.addoption(group)


def _worker_id(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return workerinput.get("workerid") if workerinput else None


def fixture_id(fixturedef) -> str:
    return f"{fixturedef.baseid}::{fixturedef.argname}"


def phase_outcome(report: pytest.TestReport) -> str:
    """passed | failed | skipped | xfailed | xpassed: pytest's own reading of one phase
    (a strict XPASS is already "failed" in the report)."""
    if hasattr(report, "wasxfail"):
        if report.skipped:
            return "xfailed"
        if report.passed:
            return "xpassed"
    return report.outcome


def _guess(exc: BaseException | None) -> str:
    if exc is None:
        return "passed"
    if isinstance(exc, pytest.xfail.Exception):
        return "xfailed"
    return "skipped" if isinstance(exc, pytest.skip.Exception) else "failed"


def _reraised(config: pytest.Config, exc: BaseException | None) -> bool:
    """Whether pytest lets exc escape the test protocol unreported (its runner's rule)."""
    if isinstance(exc, pytest.exit.Exception):
        return True
    return isinstance(exc, KeyboardInterrupt) and not config.getoption("usepdb", False)


def closure(item: pytest.Item) -> frozenset:
    """Fixture ids in the item's static closure (the definition that applies to it)."""
    info = getattr(item, "_fixtureinfo", None)
    return frozenset(fixture_id(defs[-1]) for defs in
                     (info.name2fixturedefs.values() if info else ()) if defs)


def active_fixtures(item: pytest.Item) -> frozenset:
    """Fixture ids active for the item now, including those pulled by getfixturevalue."""
    # FixtureRequest._fixture_defs (pytest 7-9; sub-requests share the dict, so a fixture
    # pulled inside another fixture is there too). Private, hence the fallback.
    defs = getattr(getattr(item, "_request", None), "_fixture_defs", None)
    if isinstance(defs, dict):
        return frozenset(fixture_id(d) for d in defs.values())
    return fixtures_by_name(item)


def fixtures_by_name(item: pytest.Item) -> frozenset:
    """The same from the public FixtureRequest.fixturenames and the fixture manager."""
    found = set()
    request = getattr(item, "_request", None)
    for name in (request.fixturenames if request else ()):
        try:
            visible = item.session._fixturemanager.getfixturedefs(name, item)
        except Exception:  # another pytest's signature: the closure is all we know
            visible = None
        if visible:
            found.add(fixture_id(visible[-1]))
    return frozenset(found)


class Tracer:
    """Writes markers (and, for the in-process backend, socket events) to a sink."""

    def __init__(self, config: pytest.Config, sink, inprocess: bool) -> None:
        self.config = config
        self.sink = sink
        self.inprocess = inprocess
        self.worker = _worker_id(config)
        self.pid = os.getpid()
        self._starts: dict[tuple[str, str], int] = {}
        self._ending: dict[tuple[str, str], str] = {}  # phases awaiting pytest's report

    def _safe(self, record, urgent: bool = True) -> None:
        try:
            self.sink(record, urgent)
        except Exception as exc:  # degrade, never fail the test
            warnings.warn(f"svctrace: could not record {type(record).__name__}: {exc}")

    def edge(self, nodeid: str, phase: str, edge: str, outcome: str | None = None) -> None:
        mono, wall = time.monotonic_ns(), time.time_ns()
        duration = None
        if edge == "start":
            self._starts[(nodeid, phase)] = mono
        else:
            started = self._starts.pop((nodeid, phase), None)
            duration = (mono - started) / 1e9 if started is not None else None
        self._safe(Marker(mono, wall, os.getpid(), self.worker, nodeid, phase, edge, outcome,
                          duration))

    def fixture(self, fixturedef, when: str, edge: str) -> None:
        # Wider-scoped fixtures decide inheritance: their edges are written at once (for
        # the eBPF backend a write is also a fold boundary). Function-scoped ones only
        # name the fixture in evidence: they travel with the next phase marker.
        self._safe(FixtureMarker(time.monotonic_ns(), time.time_ns(), os.getpid(),
                                 fixture_id(fixturedef), fixturedef.scope, when, edge),
                   urgent=fixturedef.scope != "function")

    def describe(self, item: pytest.Item, pulled: frozenset = frozenset()) -> None:
        """TestInfo: the fixture closure known at collection, plus `pulled`: fixtures the
        test activated at run time (request.getfixturevalue, pytest-django's DB setup)."""
        cls = getattr(item, "cls", None)
        bases = tuple(c.__name__ for c in cls.__mro__[1:] if c is not object) if cls else ()
        path = item.nodeid.split("::")[0]
        self._safe(TestInfo(item.nodeid, tuple(sorted(closure(item) | pulled)),
                            tuple(sorted({m.name for m in item.iter_markers()})), path,
                            bases, self.worker), urgent=False)

    # -- hooks ---------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_collection(self, session):
        self.edge("", "collection", "start")
        yield
        self.edge("", "collection", "end")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            self.describe(item)
        # Written before xdist hears this worker finished collecting (so before any test
        # runs anywhere): a later TestInfo from the worker that ran a test always wins.
        self._safe_flush()

    def _phase(self, item: pytest.Item, phase: str):
        self.flush_ends()
        self.edge(item.nodeid, phase, "start")
        outcome = yield
        exc = outcome.excinfo[1] if outcome.excinfo else None
        if _reraised(item.config, exc):
            # pytest re-raises it without a report (Ctrl-C, pytest.exit): end the window
            # now; the test never finished.
            self.edge(item.nodeid, phase, "end", "interrupted")
        else:
            # The outcome is pytest's report, made after this hook: unittest skips and
            # failures, xfail and strict XPASS raise nothing here (or the wrong thing).
            self._ending[(item.nodeid, phase)] = _guess(exc)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Only ends this process left open: an xdist controller sees its workers' reports.
        if self._ending.pop((report.nodeid, report.when), None) is not None:
            self.edge(report.nodeid, report.when, "end", phase_outcome(report))

    def flush_ends(self) -> None:
        """End windows whose report never came (a runner that calls runtestprotocol with
        log=False) with the outcome the hook's exception suggests."""
        while self._ending:
            (nodeid, phase), guess = self._ending.popitem()
            self.edge(nodeid, phase, "end", guess)

    # tryfirst hookwrappers are outermost: every fixture pytest runs in a phase falls
    # inside its window (the known failure: setup-fixture traffic lost without this).
    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item):
        yield from self._phase(item, "setup")

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item):
        yield from self._phase(item, "call")

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_teardown(self, item):
        # Setup and call are over: every fixture the test pulled is active now.
        pulled = active_fixtures(item) - closure(item)
        if pulled:
            self.describe(item, pulled)
        yield from self._phase(item, "teardown")

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_fixture_setup(self, fixturedef, request):
        self.fixture(fixturedef, "setup", "start")
        yield
        self.fixture(fixturedef, "setup", "end")

    @pytest.hookimpl(trylast=True)
    def pytest_fixture_post_finalizer(self, fixturedef, request) -> None:
        self.fixture(fixturedef, "teardown", "end")

    def session_start(self) -> None:
        self.edge("", "session", "start")

    def _safe_flush(self) -> None:
        try:
            self.sink.flush()
        except Exception:
            pass

    def session_end(self) -> None:
        self.flush_ends()
        self.edge("", "session", "end")
        self._safe_flush()


def _inprocess_install(sink) -> None:
    from svctrace.backends import inprocess
    inprocess.install(sink.event)


def _open_pipe(pipe: str):
    try:
        return PipeSink(pipe)
    except OSError as exc:
        warnings.warn(f"svctrace: cannot open marker pipe {pipe}: {exc.strerror}; "
                      "tracing disabled for this process")
        return None


def _passive(config: pytest.Config, pipe: str) -> None:
    """A nested pytest under the in-process backend: no markers, but its socket events
    and its ancestry, so its traffic is charged to the owner's test that started it."""
    sink = _open_pipe(pipe)
    if sink is None:
        return
    for record in owner.ancestry(int(os.environ[ENV_OWNER])):
        sink(record, urgent=False)
    config.stash[PASSIVE] = sink
    _inprocess_install(sink)


def pytest_configure(config: pytest.Config) -> None:
    from pytest_svctrace import select
    config.pluginmanager.register(select, "svctrace-select")
    pipe = os.environ.get(ENV_PIPE)
    report = config.getoption("svctrace_report") or None
    role = owner.role(config)
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
            if config.pluginmanager.hasplugin("xdist"):
                config.pluginmanager.register(owner.XdistOwner(), "svctrace-xdist-owner")
    elif report:
        sink, inprocess = MemorySink(), True
    else:
        return
    tracer = Tracer(config, sink, inprocess)
    config.stash[STATE] = tracer
    config.pluginmanager.register(tracer, "svctrace-tracer")
    if not pipe:
        from pytest_svctrace.standalone import StandaloneReport
        config.pluginmanager.register(StandaloneReport(config, tracer, report),
                                      "svctrace-standalone")
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
        from svctrace.backends import inprocess
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

