"""The pytest plugin with pytester: inert by default, standalone reports, xdist, the patch."""
from __future__ import annotations

import json
import socket
import sys

import pytest

from svctrace.capture import inprocess
from tests.support.e2e import SVCTRACE

SUITE = '''
import os, socket, urllib.request, pytest

WEB, BEFORE, AFTER = (int(os.environ[f"{name}_PORT"]) for name in ("WEB", "BEFORE", "AFTER"))

@pytest.fixture
def pinged():
    socket.socket().connect_ex(("127.0.0.1", BEFORE))
    yield
    socket.socket().connect_ex(("127.0.0.1", AFTER))

def test_phases(pinged):
    assert urllib.request.urlopen(f"http://127.0.0.1:{WEB}/").status == 200

@pytest.mark.parametrize("n", range(4))
def test_many(n):
    socket.create_connection(("127.0.0.1", WEB)).close()
'''


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def suite(pytester, http_url, monkeypatch):
    """A suite whose services need nothing installed: "web" (a real http.server on
    127.0.0.1) and two ports nobody listens on, one refused in setup, one in teardown."""
    monkeypatch.delenv("SVCTRACE_PIPE", raising=False)
    ports = {"web": int(http_url.rsplit(":", 1)[1].strip("/")), "before": _unused_port(),
             "after": _unused_port()}
    for name, port in ports.items():
        monkeypatch.setenv(f"{name.upper()}_PORT", str(port))
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(".toml", pyproject="[tool.svctrace.services]\n" + "".join(
        f'{name} = ["127.0.0.1:{port}"]\n' for name, port in ports.items()))
    return pytester


def _check(report):
    phases = report["tests"]["test_suite.py::test_phases"]["phases"]
    assert phases == {"setup": ["before"], "call": ["web"], "teardown": ["after"]}
    for n in range(4):
        assert report["tests"][f"test_suite.py::test_many[{n}]"]["services"] == ["web"]


def test_plugin_is_inert_unless_enabled(suite):
    result = suite.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    assert not (suite.path / "svctrace-report.json").exists()
    assert not inprocess.installed()
    assert "connect" not in socket.socket.__dict__


def test_standalone_report_without_svctrace_run(suite):
    result = suite.runpytest_inprocess("-p", "no:cacheprovider", "--svctrace-report", "out.json")
    result.assert_outcomes(passed=5)
    report = json.loads((suite.path / "out.json").read_text())
    assert report["run"]["backend"] == "inprocess"
    _check(report)
    result.stdout.fnmatch_lines(["*svctrace: backend inprocess, 5 tests ran*"])
    # the patch is gone once pytest unconfigures
    assert not inprocess.installed() and "connect" not in socket.socket.__dict__


def test_standalone_report_with_xdist(suite):
    result = suite.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2",
                                        "--svctrace-report", "out.json")
    result.assert_outcomes(passed=5)
    report = json.loads((suite.path / "out.json").read_text())
    _check(report)
    assert {t["worker"] for t in report["tests"].values()} == {"gw0", "gw1"}


def test_huge_nodeid_survives_the_pipe(pytester, tmp_path):
    pytester.makepyfile(test_long='''
import socket, pytest
@pytest.mark.parametrize("x", [1], ids=["x" * 6000])
def test_long(x):
    socket.socket().connect_ex(("127.0.0.1", 9))
''')
    import subprocess
    proc = subprocess.run(SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--",
                                      sys.executable, "-m", "pytest", "-q", "-p",
                                      "no:cacheprovider", "test_long.py"],
                          cwd=pytester.path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((pytester.path / "r.json").read_text())
    nodeid = f"test_long.py::test_long[{'x' * 6000}]"
    assert list(report["tests"][nodeid]["failed_probes"]) == ["127.0.0.1:9"]


def test_patch_never_changes_behaviour_or_raises_from_tracing():
    def broken_sink(event):
        raise RuntimeError("tracing is broken")
    inprocess.install(broken_sink)
    try:
        sock = socket.socket()
        with pytest.raises(ConnectionRefusedError):
            sock.connect(("127.0.0.1", 9))
        assert sock.connect_ex(("127.0.0.1", 9)) != 0
        sock.close()
        left, right = socket.socketpair()
        left.sendall(b"abc")
        assert right.recv(3) == b"abc"
    finally:
        inprocess.uninstall()
    assert "connect" not in socket.socket.__dict__


def test_patch_records_refused_and_pooled_sends():
    seen = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    inprocess.install(seen.append)
    try:
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"1")
        client.send(b"2")
        client.close()
        refused = socket.socket()
        refused.connect_ex(("127.0.0.1", 9))
        refused.close()
    finally:
        inprocess.uninstall()
        server.close()
    kinds = [(e.kind, e.dest.port, e.result) for e in seen]
    assert kinds == [("connect", port, 0), ("send", port, 1), ("send", port, 1),
                     ("connect", 9, -111)]


INCIDENTAL = '''
import os, socket, pytest

def web():
    socket.create_connection(("127.0.0.1", int(os.environ["WEB_PORT"]))).close()

@pytest.fixture(autouse=True)
def flush_after_each_test():
    yield
    web()

@pytest.mark.parametrize("n", range(9))
def test_plain(n):
    assert n >= 0

def test_really_uses_web():
    web()
'''


def test_autouse_teardown_flush_is_flagged_as_baseline_candidate(suite):
    suite.makepyfile(test_suite=INCIDENTAL)
    result = suite.runpytest_inprocess("-p", "no:cacheprovider", "--svctrace-report", "o.json")
    result.assert_outcomes(passed=10)
    report = json.loads((suite.path / "o.json").read_text())
    incidental = report["summary"]["incidental"]
    assert incidental == [{"service": "web", "share": 0.9, "tests": 9,
                           "via": "fixture test_suite.py::flush_after_each_test"}]
    assert report["tests"]["test_suite.py::test_plain[0]"]["phases"]["teardown"] == ["web"]
    result.stdout.fnmatch_lines(["*baseline candidate: web in 90% of tests, only via "
                                 "fixture test_suite.py::flush_after_each_test*"])
    # declared baseline removes it from needs, but keeps the observation
    pyproject = suite.path / "pyproject.toml"
    pyproject.write_text('[tool.svctrace]\nbaseline = ["web"]\n' + pyproject.read_text())
    suite.runpytest_inprocess("-p", "no:cacheprovider", "--svctrace-report", "b.json")
    report = json.loads((suite.path / "b.json").read_text())
    plain = report["tests"]["test_suite.py::test_plain[0]"]
    assert plain["services"] == ["web"] and plain["needs"] == [] \
        and plain["baseline"] == ["web"]


def test_patch_sees_asyncio_transports():
    import asyncio
    seen = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    async def talk():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        await writer.drain()
        writer.close()

    inprocess.install(seen.append)
    try:
        asyncio.run(talk())
    finally:
        inprocess.uninstall()
        server.close()
    assert [(e.kind, e.dest.port) for e in seen if e.dest.port == port] == [
        ("connect", port), ("send", port)]


def test_a_pytest_run_inside_a_traced_pytest_process_leaves_the_pipe_alone(pytester):
    """pytester's in-process runs must not write their node ids into the outer run's pipe."""
    pytester.makepyfile(test_outer='''
import os
def test_inner_run(pytester):
    pytester.makepyfile(test_inner="def test_x():\\n    pass\\n")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    assert os.environ["SVCTRACE_PIPE_OWNER"] == str(os.getpid())
''')
    import subprocess
    proc = subprocess.run(SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--",
                                      sys.executable, "-m", "pytest", "-q", "-p", "pytester",
                                      "-p", "no:cacheprovider", "test_outer.py"],
                          cwd=pytester.path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((pytester.path / "r.json").read_text())
    assert list(report["tests"]) == ["test_outer.py::test_inner_run"]


def test_listed_node_ids_keep_only_those_tests_in_the_run_and_its_workers(pytester,
                                                                          monkeypatch):
    """svctrace prove's re-runs: SVCTRACE_SELECT names a file of node ids; the pytest that
    owns the run (serial or with xdist workers) keeps those, by its own collection; a
    pytest a test starts (nested) ignores the file."""
    from svctrace.contract import ENV_OWNER, ENV_SELECT
    pytester.makepyfile(test_sel="""
        import pytest

        @pytest.mark.parametrize("n", range(4))
        def test_p(n):
            pass

        def test_other():
            pass
    """)
    listed = pytester.path / "ids.txt"
    listed.write_text("test_sel.py::test_p[1]\ntest_sel.py::test_other\n")
    monkeypatch.setenv(ENV_SELECT, str(listed))
    monkeypatch.delenv(ENV_OWNER, raising=False)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-v")
    result.assert_outcomes(passed=2, deselected=3)
    result.stdout.fnmatch_lines(["*kept the 2 listed tests of 2, deselected 3*",
                                 "*test_sel.py::test_p?1? PASSED*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=2)
    monkeypatch.setenv(ENV_OWNER, "1")  # another process owns the run: this one is nested
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)


LOGGED_LATER = '''
import pytest
from _pytest.runner import runtestprotocol

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item, nextitem):
    """pytest-rerunfailures' shape: the phases run unlogged, their reports logged after."""
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for report in runtestprotocol(item, nextitem=nextitem, log=False):
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True
'''


def test_a_runner_that_logs_reports_after_the_phases_keeps_phases_and_outcomes(suite):
    """The plugin's phase edges come from pytest's reports; a protocol that runs the phases
    with log=False and logs the reports afterwards still gets each phase's own window (from
    the phase hooks) and pytest's outcomes (from the reports, when they come)."""
    suite.makeconftest(LOGGED_LATER)
    suite.makepyfile(test_fails='def test_fails():\n    assert False\n')
    result = suite.runpytest_inprocess("-p", "no:cacheprovider", "--svctrace-report",
                                       "r.json")
    result.assert_outcomes(passed=5, failed=1)
    report = json.loads((suite.path / "r.json").read_text())
    _check(report)
    assert report["tests"]["test_fails.py::test_fails"]["outcome"] == "failed"
    assert report["tests"]["test_suite.py::test_phases"]["outcome"] == "passed"
