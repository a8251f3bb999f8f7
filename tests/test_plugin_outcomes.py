"""Test outcomes in the report are pytest's own (from its reports), in both plugin modes."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.e2e import SVCTRACE

OUTCOMES = '''
import unittest, pytest

class TestCase(unittest.TestCase):
    def test_pass(self):
        pass
    def test_fail(self):
        self.assertEqual(1, 2)
    def test_skip_call(self):
        self.skipTest("not here")
    @unittest.skip("decorated")
    def test_skip_decorated(self):
        pass
    @unittest.expectedFailure
    def test_expected_failure(self):
        self.assertEqual(1, 2)

@pytest.fixture
def broken():
    raise RuntimeError("setup breaks")

@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown breaks")

def test_pass():
    pass
def test_fail():
    assert False
def test_skip():
    pytest.skip("skip in the body")
@pytest.mark.skip(reason="marked")
def test_skip_mark():
    pass
def test_setup_error(broken):
    pass
def test_teardown_error(bad_teardown):
    pass
@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert False
def test_xfail_imperative():
    pytest.xfail("known, said inside the test")
@pytest.mark.xfail(run=False)
def test_xfail_not_run():
    pass
@pytest.mark.xfail(reason="fixed since")
def test_xpass():
    pass
@pytest.mark.xfail(strict=True)
def test_xpass_strict():
    pass
'''

EXPECTED = {
    "TestCase::test_pass": "passed",
    "TestCase::test_fail": "failed",
    "TestCase::test_skip_call": "skipped",
    "TestCase::test_skip_decorated": "skipped",
    "TestCase::test_expected_failure": "xfailed",
    "test_pass": "passed",
    "test_fail": "failed",
    "test_skip": "skipped",
    "test_skip_mark": "skipped",
    "test_setup_error": "error",
    "test_teardown_error": "error",
    "test_xfail": "xfailed",
    "test_xfail_imperative": "xfailed",
    "test_xfail_not_run": "xfailed",
    "test_xpass": "xpassed",
    "test_xpass_strict": "failed",  # pytest counts a strict XPASS as a failure
}
# What pytest's terminal summary says for the same run (the teardown error also counts the
# test's call as passed).
PYTEST_COUNTS = {"passed": 3, "failed": 3, "errors": 2, "skipped": 4, "xfailed": 4,
                 "xpassed": 1}


def _outcomes(report: dict) -> dict[str, str]:
    return {nodeid.split("::", 1)[1]: test["outcome"] for nodeid, test in report["tests"].items()}


def test_standalone_outcomes_are_pytests_own(pytester):
    pytester.makepyfile(test_outcomes=OUTCOMES)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--svctrace-report",
                                          "r.json")
    result.assert_outcomes(**PYTEST_COUNTS)
    assert _outcomes(json.loads((pytester.path / "r.json").read_text())) == EXPECTED


def test_outcomes_through_the_pipe_and_explain(pytester):
    pytester.makepyfile(test_outcomes=OUTCOMES)
    proc = subprocess.run(SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--progress",
                                      "0", "--", sys.executable, "-m", "pytest", "-q", "-p",
                                      "no:cacheprovider", "test_outcomes.py"],
                          cwd=pytester.path, capture_output=True, text=True)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # pytest's status: tests failed
    assert _outcomes(json.loads((pytester.path / "r.json").read_text())) == EXPECTED
    explained = subprocess.run(SVCTRACE + ["explain", "r.json",
                                           "test_outcomes.py::test_xpass_strict"],
                               cwd=pytester.path, capture_output=True, text=True)
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout.splitlines()[0].startswith("test_outcomes.py::test_xpass_strict: "
                                                       "failed")


def test_interrupted_and_not_run(pytester, http_url):
    """A test stopped by Ctrl-C never finished, and its window closed when the interrupt
    left it (what pytest does next is not the test's); the test after it never ran."""
    pytester.makeconftest(f'''
import socket
def pytest_keyboard_interrupt(excinfo):
    socket.create_connection(("127.0.0.1", {http_url.rsplit(":", 1)[1].strip("/")})).close()
''')
    pytester.makepyfile(test_stop='''
def test_first():
    raise KeyboardInterrupt
def test_second():
    pass
''')
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "--svctrace-report", "r.json",
                                 no_reraise_ctrlc=True)
    report = json.loads((pytester.path / "r.json").read_text())
    assert _outcomes(report) == {"test_first": "interrupted", "test_second": "not run"}
    # The connect came after the call window ended: unattributed, or at most in the gap
    # after the call (attribution's choice), never inside the call.
    evidence = report["tests"]["test_stop.py::test_first"]["evidence"]
    assert [s for s, e in evidence.items() if not e.get("gaps")] == []
    assert evidence or report["unattributed"]
