"""Processes left running by the traced command must not keep `svctrace run --backend strace`
alive: strace 6.1 waits for every tracee and has no kill-on-exit option."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from svctrace.capture.base import RunContext
from svctrace.capture.strace import LEFTOVER_GRACE_S, StraceBackend
from svctrace.capture.strace_parse import StraceParser
from tests.support.backends import needs_backend
from tests.support.e2e import SVCTRACE

needs_strace = needs_backend("strace")


def unique_seconds() -> str:
    """A sleep argument no other process has: how the test finds (and kills) its leftover."""
    return f"600.{uuid.uuid4().int % 10**9:09d}"


def processes_with_cmdline(argv: list[str]) -> list[int]:
    want = "\0".join(argv).encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if fh.read() == want:
                        found.append(int(entry))
            except OSError:
                pass
    return found


def tracer_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    raise AssertionError(f"no TracerPid for {pid}")


def kill_all(argv: list[str]) -> None:
    for pid in processes_with_cmdline(argv):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_cli(tmp_path, command: list[str], timeout: float = 60,
            env_extra: dict | None = None, cwd=None) -> tuple[int, float, dict, str]:
    """`svctrace run --backend strace` as a user runs it. Output goes to files, not pipes:
    a leftover process inherits them and would keep a pipe reader waiting."""
    out = (tmp_path / "svctrace.out").open("w+")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SVCTRACE_", "SUDO_"))}
    env.update(env_extra or {})
    started = time.monotonic()
    proc = subprocess.Popen(SVCTRACE + ["run", "--backend", "strace", "--report",
                                        str(tmp_path / "r.json"), "--progress", "0", "--",
                                        *command],
                            cwd=cwd or tmp_path, env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    took = time.monotonic() - started
    out.seek(0)
    output = out.read()
    out.close()
    report_path = tmp_path / "r.json"
    assert report_path.exists(), f"no report; exit {rc}\n{output}"
    return rc, took, json.loads(report_path.read_text()), output


@needs_strace
def test_cli_returns_command_status_despite_leftover_process(tmp_path):
    sleeper = ["sleep", unique_seconds()]
    try:
        rc, took, report, output = run_cli(
            tmp_path, ["sh", "-c", f"{' '.join(sleeper)} & exit 3"])
        assert rc == 3, output
        assert took < LEFTOVER_GRACE_S + 7, f"took {took:.1f} s"
        run = report["run"]
        assert run["exit_code"] == 3
        stats = run["backend_stats"]
        assert stats["leftover_processes_detached"] is True
        assert stats["truncated"] is False
        left = processes_with_cmdline(sleeper)
        assert len(left) == 1, "the leftover must keep running after the run"
        assert tracer_of(left[0]) == 0, "the leftover must no longer be traced"
        assert {"pid": left[0], "comm": "sleep"} in stats["leftover_processes"]
        assert any(str(left[0]) in note for note in stats["notes"])
        # The sh and sleep processes were traced from the start: nothing was cut short.
        assert stats["unparsed_lines"] == 0 and stats["events"] > 0
    finally:
        kill_all(sleeper)


@needs_strace
def test_cli_exit_status_is_the_commands_without_leftovers(tmp_path):
    rc, took, report, output = run_cli(tmp_path, ["sh", "-c", "exit 7"])
    assert rc == 7, output
    assert report["run"]["exit_code"] == 7
    stats = report["run"]["backend_stats"]
    assert stats["leftover_processes_detached"] is False
    assert "notes" not in stats and "leftover_processes" not in stats
    assert took < LEFTOVER_GRACE_S, "no leftover: no waiting for the grace period"


@needs_strace
def test_pytest_run_with_leftover_process_reports_its_test(tmp_path):
    sleeper = ["sleep", unique_seconds()]
    (tmp_path / "test_x.py").write_text(textwrap.dedent(f"""
        import socket, subprocess

        def test_leaves_a_process_behind():
            with socket.socket() as s:
                s.settimeout(2)
                s.connect_ex(("127.0.0.1", 9))
            subprocess.Popen({sleeper!r}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    """))
    try:
        rc, took, report, output = run_cli(
            tmp_path, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       "test_x.py"])
        assert rc == 0, output
        assert took < 30, f"took {took:.1f} s"
        assert report["run"]["exit_code"] == 0
        test = report["tests"]["test_x.py::test_leaves_a_process_behind"]
        # a connect with a timeout returns EINPROGRESS; strace does not see its later
        # refusal (a blind spot), so it stays a contact rather than a failed probe
        assert test["services"] == ["tcp:127.0.0.1:9"], test
        assert test["phases"]["call"] == ["tcp:127.0.0.1:9"]
        stats = report["run"]["backend_stats"]
        assert stats["leftover_processes_detached"] is True
        left = processes_with_cmdline(sleeper)
        assert len(left) == 1 and tracer_of(left[0]) == 0
        assert left[0] in [p["pid"] for p in stats["leftover_processes"]]
    finally:
        kill_all(sleeper)


@needs_strace
def test_cli_under_sudo_runs_command_as_user_and_detaches_leftover(tmp_path):
    """The runner's sudo path: strace stays root and runs the command with -u USER."""
    if os.geteuid() != 0:
        pytest.skip("the sudo path needs root (run svctrace's tests as root to cover it)")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user to run the command as")
    sleeper = ["sleep", unique_seconds()]
    shared = tempfile.mkdtemp(prefix="svctrace-sudo-")  # the user must write here
    os.chmod(shared, 0o777)
    who = os.path.join(shared, "who")
    try:
        # The report is written as the user too: in their folder, not root's.
        rc, took, report, output = run_cli(
            Path(shared), ["sh", "-c", f"id -u > {who}; {' '.join(sleeper)} & exit 4"],
            env_extra={"SUDO_UID": str(user.pw_uid), "SUDO_GID": str(user.pw_gid),
                       "SUDO_USER": user.pw_name}, cwd="/")
        assert rc == 4, output
        assert took < LEFTOVER_GRACE_S + 7, f"took {took:.1f} s"
        with open(who) as fh:
            assert int(fh.read()) == user.pw_uid
        run = report["run"]
        assert run["exit_code"] == 4 and run["ran_as"] == user.pw_name
        assert run["backend_stats"]["leftover_processes_detached"] is True
        left = processes_with_cmdline(sleeper)
        assert len(left) == 1 and tracer_of(left[0]) == 0
        assert os.stat(f"/proc/{left[0]}").st_uid == user.pw_uid
    finally:
        kill_all(sleeper)
        shutil.rmtree(shared, ignore_errors=True)


@needs_strace
def test_backend_grace_setting_and_exit_code(tmp_path):
    """Driven as the runner drives it: wait for strace (the waited-for child), polling."""
    sleeper = ["sleep", unique_seconds()]
    backend = StraceBackend()
    backend.prepare(RunContext(command=[], settings={"leftover_grace_s": 0.5}))
    try:
        proc = subprocess.Popen(
            backend.wrap_command(["sh", "-c", f"{' '.join(sleeper)} & exit 5"]),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        backend.child_started(proc.pid)
        records, started = [], time.monotonic()
        while proc.poll() is None and time.monotonic() - started < 30:
            records += backend.poll()
            time.sleep(0.02)
        took = time.monotonic() - started
        assert proc.returncode == -signal.SIGKILL  # strace itself was stopped
        assert backend.command_exit_code() == 5
        records += backend.stop()
        assert took < 5, f"took {took:.1f} s with a 0.5 s grace"
        stats = backend.stats()
        assert stats["leftover_processes_detached"] is True
        assert stats["events"] == len(records)
        left = processes_with_cmdline(sleeper)
        assert [p["pid"] for p in stats["leftover_processes"]] == left
        exits = [r.pid for r in records if getattr(r, "kind", "") == "exit"]
        assert backend._parser.root_pid in exits and left[0] not in exits
    finally:
        kill_all(sleeper)


@pytest.mark.parametrize("line, status", [
    ("100 1.000000001 +++ exited with 7 +++", 7),
    ("100 1.000000001 +++ exited with 0 +++", 0),
    ("100 1.000000001 +++ killed by SIGKILL +++", 128 + 9),
    ("100 1.000000001 +++ killed by SIGSEGV (core dumped) +++", 128 + 11),
    ("100 1.000000001 +++ killed by SIGRT_2 +++", 128 + 34),
])
def test_parser_learns_the_root_exit_status(line, status):
    parser = StraceParser(root_ppid=50)
    parser.feed('100 1.000000000 execve("/bin/sh", ["sh"], 0x1 /* 1 var */) = 0')
    parser.feed("100 1.000000000 clone(child_stack=NULL, flags=SIGCHLD) = 101")
    parser.feed("101 1.000000000 +++ exited with 9 +++")  # a child: not the command
    assert not parser.root_exited and parser.root_status is None
    assert parser.live_processes() == {100: "sh"}
    parser.feed(line)
    assert parser.root_exited and parser.root_status == status
    assert parser.live_processes() == {}


def test_parser_root_exit_status_unknown_signal():
    parser = StraceParser()
    parser.feed("100 1.0 +++ killed by SIGNOPE +++")
    assert parser.root_exited and parser.root_status is None
