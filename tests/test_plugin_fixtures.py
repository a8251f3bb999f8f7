"""Inheritance covers wider-scoped fixtures a test pulls at run time (request.getfixturevalue)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.e2e import SVCTRACE

DYNAMIC = '''
import socket, pytest

@pytest.fixture(scope="session")
def web_session():
    socket.create_connection(("127.0.0.1", {port})).close()
    return "ready"

def test_first(request):
    assert request.getfixturevalue("web_session") == "ready"

def test_unrelated():
    pass

def test_later(request):
    assert request.getfixturevalue("web_session") == "ready"
'''

# pytest-django's shape: a marker, an autouse fixture that sees it, and getfixturevalue of
# the session fixture that sets the database up.
DJANGO_CONFTEST = '''
import socket, pytest

@pytest.fixture(scope="session")
def django_db_setup():
    socket.create_connection(("127.0.0.1", {port})).close()

@pytest.fixture(autouse=True)
def _django_db_marker(request):
    if request.node.get_closest_marker("django_db"):
        request.getfixturevalue("django_db_setup")
'''
DJANGO_TESTS = '''
import pytest

@pytest.mark.django_db
def test_first():
    pass

def test_unrelated():
    pass

@pytest.mark.django_db
def test_later():
    pass
'''


@pytest.fixture
def web(pytester, http_url) -> str:
    """The port of a real HTTP listener on 127.0.0.1, named "web" in the suite's config."""
    port = http_url.rsplit(":", 1)[1].strip("/")
    pytester.makefile(".toml", pyproject=f'[tool.svctrace.services]\nweb = ["127.0.0.1:{port}"]\n')
    pytester.makeini("[pytest]\nmarkers =\n    django_db: the test uses the database\n")
    return port


def _inherited(pytester, path: str) -> dict:
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--svctrace-report", "r.json")
    result.assert_outcomes(passed=3)
    report = json.loads((pytester.path / "r.json").read_text())
    return {nodeid.split("::", 1)[1]: test["inherited"] for nodeid, test in report["tests"].items()
            if nodeid.startswith(path)}


def test_getfixturevalue_of_a_session_fixture_is_inherited(pytester, web):
    pytester.makepyfile(test_dynamic=DYNAMIC.format(port=web))
    fixture = {"web": ["test_dynamic.py::web_session"]}
    assert _inherited(pytester, "test_dynamic.py") == {
        "test_first": fixture, "test_unrelated": {}, "test_later": fixture}


def test_marker_driven_autouse_fixture_pulling_a_session_fixture(pytester, web):
    pytester.makeconftest(DJANGO_CONFTEST.format(port=web))
    pytester.makepyfile(test_db=DJANGO_TESTS)
    fixture = {"web": ["::django_db_setup"]}
    assert _inherited(pytester, "test_db.py") == {
        "test_first": fixture, "test_unrelated": {}, "test_later": fixture}


def test_fallback_by_public_fixture_names_sees_pulled_fixtures(pytester):
    """The fallback for a pytest without FixtureRequest._fixture_defs, on a real item."""
    pytester.makepyfile(test_fallback='''
import pytest
from pytest_svctrace.markers import active_fixtures, fixtures_by_name

@pytest.fixture(scope="module")
def pulled():
    return 1

@pytest.fixture
def static():
    return 2

def test_both(request, static):
    request.getfixturevalue("pulled")
    found = fixtures_by_name(request.node)
    assert {"test_fallback.py::pulled", "test_fallback.py::static"} <= found
    assert found == active_fixtures(request.node)
''')
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_pulled_fixtures_reach_the_report_through_the_pipe_from_xdist_workers(pytester, web):
    """Under `svctrace run` with two workers: each worker's re-sent TestInfo wins over the
    collection-time TestInfo every worker sends for every test."""
    pytester.makepyfile(test_dynamic=DYNAMIC.format(port=web))
    proc = subprocess.run(SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--progress",
                                      "0", "--", sys.executable, "-m", "pytest", "-q", "-p",
                                      "no:cacheprovider", "-n", "2", "test_dynamic.py"],
                          cwd=pytester.path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((pytester.path / "r.json").read_text())
    fixture = {"web": ["test_dynamic.py::web_session"]}
    assert {nodeid.split("::", 1)[1]: test["inherited"]
            for nodeid, test in report["tests"].items()} == {
        "test_first": fixture, "test_unrelated": {}, "test_later": fixture}


def test_items_that_are_not_functions_are_traced_too(pytester):
    """Doctests and a plugin's own Item type (no fixture request at all)."""
    pytester.makeconftest('''
import pytest

class CheckItem(pytest.Item):
    def runtest(self):
        pass

class CheckFile(pytest.File):
    def collect(self):
        yield CheckItem.from_parent(self, name="check")

def pytest_collect_file(parent, file_path):
    if file_path.suffix == ".check":
        return CheckFile.from_parent(parent, path=file_path)
''')
    pytester.makefile(".check", data="")
    pytester.makepyfile(mod='def f():\n    """\n    >>> 1 + 1\n    2\n    """\n')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--doctest-modules",
                                          "--svctrace-report", "r.json")
    result.assert_outcomes(passed=2)
    report = json.loads((pytester.path / "r.json").read_text())
    assert {nodeid: test["outcome"] for nodeid, test in report["tests"].items()} == {
        "data.check::check": "passed", "mod.py::mod.f": "passed"}
    assert report["run"]["notes"] == []


FUNCTION_FIXTURES = '''
import socket, pytest

def _touch(port):
    socket.create_connection(("127.0.0.1", port)).close()

@pytest.fixture
def opened():
    _touch({port})
    yield
    _touch({port})

@pytest.fixture
def plain():
    return 1

def test_in_fixtures(opened, plain):
    pass

def test_in_body(plain):
    _touch({port})
'''


@pytest.mark.parametrize("through", ["pipe", "standalone"])
def test_function_fixtures_are_named_in_evidence_setup_and_teardown(pytester, web, through):
    """Their windows travel as one record per phase (fewer records): still named per contact."""
    pytester.makepyfile(test_fn=FUNCTION_FIXTURES.format(port=web))
    pytest_args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "test_fn.py"]
    if through == "pipe":
        cmd = SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--progress", "0", "--",
                          sys.executable, *pytest_args]
    else:
        cmd = [sys.executable, *pytest_args, "--svctrace-report", "r.json"]
    proc = subprocess.run(cmd, cwd=pytester.path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = json.loads((pytester.path / "r.json").read_text())["tests"]
    in_fixtures = tests["test_fn.py::test_in_fixtures"]["evidence"]["web"]
    assert in_fixtures["phases"] == ["setup", "teardown"]
    assert in_fixtures["fixtures"] == ["test_fn.py::opened"]
    in_body = tests["test_fn.py::test_in_body"]["evidence"]["web"]
    assert in_body["phases"] == ["call"] and in_body["fixtures"] == []


def test_a_tests_description_at_collection_is_the_one_describe_makes(pytester):
    """describe_collected builds each test's TestInfo line from cached pieces: the records
    must be the ones describe() makes from the item itself, for markers on the module, the
    class, the function and one parameter, base classes and overridden fixtures."""
    pytester.makeconftest('''
import pytest
@pytest.fixture
def db():
    return 1
@pytest.fixture(scope="module")
def shared():
    return 2
''')
    pytester.makepyfile(test_d='''
import pytest
pytestmark = pytest.mark.mod
@pytest.fixture
def db(db):
    return db + 1
class Base:
    pass
@pytest.mark.klass
class TestK(Base):
    @pytest.mark.parametrize("n", [1, pytest.param(2, marks=pytest.mark.two)])
    def test_p(self, n, db, shared):
        pass
    def test_q(self):
        pass
@pytest.mark.fn
def test_f(db, request):
    pass
def test_g():
    pass
''')
    pytester.makepyfile(conftest_check='')
    pytester.makeini("[pytest]\n")
    checks = pytester.path / "conftest.py"
    checks.write_text(checks.read_text() + '''
from pytest_svctrace.plugin import STATE
from svctrace.events import TestInfo

@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    tracer = session.config.stash[STATE]
    made = [r for r in tracer.sink.records if type(r) is TestInfo]
    del tracer.sink.records[:]
    for item in session.items:
        tracer.describe(item)
    again = [r for r in tracer.sink.records if type(r) is TestInfo]
    assert made == again and len(made) == 5, (made, again)
    print("DESCRIPTIONS MATCH")
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-s",
                                           "--svctrace-report", "r.json")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*DESCRIPTIONS MATCH*"])
