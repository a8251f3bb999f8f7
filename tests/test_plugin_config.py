"""Enabling the plugin (flag, ini), bad report paths, and degraded tracing that never fails tests."""
from __future__ import annotations

import json
import os

import pytest

PASSING = "def test_a():\n    pass\n"


def test_unwritable_report_path_is_one_sentence_before_anything_runs(pytester):
    pytester.makepyfile(test_a=PASSING)
    pytester.makefile(".txt", afile="not a folder")
    (pytester.path / "adir").mkdir()
    for path, why in (("afile.txt/r.json", "afile.txt is not a directory"),
                      ("adir", "it exists and is not a regular file")):
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svctrace-report",
                                               path)
        assert result.ret == 4  # pytest's usage error: nothing ran
        assert [line for line in result.stderr.lines if line.strip()] == [
            f"ERROR: --svctrace-report {path}: {why}"]
        assert "Traceback" not in result.stdout.str()


def test_report_that_cannot_be_written_at_the_end_is_one_line(pytester):
    pytester.makepyfile(test_a='''
import os
def test_takes_the_path():
    os.mkdir("r.json")  # the report path became a folder while tests ran
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svctrace-report",
                                           "r.json")
    assert result.ret == 0  # the tests passed: tracing never fails them
    result.stdout.fnmatch_lines(["svctrace: could not write the report to r.json: *"])
    assert "Traceback" not in result.stdout.str() + result.stderr.str()


def test_unopenable_pipe_under_warnings_as_errors_still_passes(pytester, monkeypatch):
    monkeypatch.setenv("SVCTRACE_PIPE", str(pytester.path / "no-such-pipe"))
    monkeypatch.delenv("SVCTRACE_PIPE_OWNER", raising=False)
    pytester.makepyfile(test_a=PASSING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    lines = [line for line in result.stderr.lines + result.stdout.lines
             if line.startswith("svctrace")]
    assert len(lines) == 1 and "cannot open the marker pipe" in lines[0], lines


@pytest.mark.parametrize("xdist", [(), ("-n", "2")], ids=["plain", "xdist"])
def test_recording_failure_under_warnings_as_errors_is_one_line_and_noted(pytester, xdist):
    """A broken sink inside the hooks: tests pass, one line, and the report says so (with
    xdist, the workers' notes reach the controller)."""
    pytester.makeconftest('''
import pytest
from pytest_svctrace.plugin import STATE

class Broken:
    """The real sink, except that it fails on every call-phase marker."""
    def __init__(self, real):
        self.real = real
    def __call__(self, record, urgent=True):
        if getattr(record, "phase", None) == "call":
            raise RuntimeError("sink is broken")
        self.real(record, urgent)
    def line(self, data, urgent=True):  # a Marker already encoded (wire.marker_line)
        if b',"call",' in data:
            raise RuntimeError("sink is broken")
        self.real.line(data, urgent)
    def __getattr__(self, name):
        return getattr(self.real, name)

@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    tracer = session.config.stash[STATE]
    tracer.sink = Broken(tracer.sink)
''')
    pytester.makepyfile(test_a=PASSING + "\ndef test_b():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error",
                                           "--svctrace-report", "r.json", *xdist)
    result.assert_outcomes(passed=2)
    notes = [line for line in result.stdout.lines if "could not record" in line]
    assert notes == ["  note: could not record Marker: RuntimeError: sink is broken "
                     "(first of 4; tracing is incomplete)"]  # in the svctrace summary
    report = json.loads((pytester.path / "r.json").read_text())
    assert any("could not record Marker" in note for note in report["run"]["notes"])


def test_report_path_from_ini(pytester):
    pytester.makeini("[pytest]\nsvctrace_report = from-ini.json\n")
    pytester.makepyfile(test_a=PASSING)
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)
    report = json.loads((pytester.path / "from-ini.json").read_text())
    assert list(report["tests"]) == ["test_a.py::test_a"]
    # -o svctrace_report= turns it off for one run
    (pytester.path / "from-ini.json").unlink()
    pytester.runpytest_inprocess("-p", "no:cacheprovider", "-o", "svctrace_report=")
    assert not (pytester.path / "from-ini.json").exists()
    # and an unusable path there is named as the ini's
    (pytester.path / "adir").mkdir()
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-o",
                                          "svctrace_report=adir")
    assert result.ret == 4
    result.stderr.fnmatch_lines(["ERROR: svctrace_report (ini) adir: it exists and is not a "
                                 "regular file"])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: access() says root may write "
                                              "anywhere, which is what this checks past")
@pytest.mark.parametrize("path", ["/proc/r.json", "/proc/new/r.json"])
def test_a_path_only_root_seems_to_write_is_refused_before_any_test(pytester, path):
    """As root, /proc passes every permission check and takes no file: the standalone
    plugin refuses it before a test runs, as `svctrace run` does (a usage error)."""
    pytester.makepyfile(test_a="import pathlib\ndef test_a():\n"
                               f"    pathlib.Path({str(pytester.path / 'ran')!r}).touch()\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svctrace-report", path)
    assert result.ret == 4
    assert [line for line in result.stderr.lines if line.strip()] == [
        f"ERROR: --svctrace-report {path}: /proc does not take new files (No such file or "
        "directory)"]
    assert not (pytester.path / "ran").exists()


def test_a_run_with_no_test_keeps_the_last_standalone_report(pytester):
    pytester.makepyfile(test_a=PASSING)
    assert pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svctrace-report",
                                         "r.json").ret == 0
    good = (pytester.path / "r.json").read_bytes()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--svctrace-report",
                                           "r.json", "-k", "no_such_test")
    assert result.ret == 5
    assert (pytester.path / "r.json").read_bytes() == good
    result.stdout.fnmatch_lines(["svctrace: pytest exited 5 (no tests collected) before "
                                 "running any test: r.json still holds the last report; "
                                 "this run's was not written"])
