"""`svctrace run` and the CLI: exit codes, signals, crashes, privileges, clear errors."""
from __future__ import annotations

import json
import re
import shutil
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.support.e2e import SVCTRACE
from tests.support.sudo import NOBODY, SUDO_ENV, sudo_dirs  # noqa: F401 - a fixture

IS_ROOT = os.geteuid() == 0


def svctrace(*args, cwd, env=None, **kw):
    return subprocess.run(SVCTRACE + list(args), cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                          timeout=120, **kw)


def test_exit_code_passes_through_and_report_is_written(tmp_path):
    proc = svctrace("run", "-b", "inprocess", "-o", "r.json", "--", "sh", "-c", "exit 7",
                    cwd=tmp_path)
    assert proc.returncode == 7
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["exit_code"] == 7 and report["tests"] == {}


def test_the_program_leaves_without_teardown_but_flushes_its_output(tmp_path):
    # cli.entry ends with os._exit: buffered output to a pipe must still arrive whole, and
    # an exit status over 255 is truncated as the kernel does for sys.exit.
    from svctrace.cli.common import EXIT_CODES_HELP
    proc = svctrace("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert proc.stdout.rstrip().endswith(EXIT_CODES_HELP.strip().splitlines()[-1].strip())
    proc = svctrace("run", "-b", "inprocess", "--", "sh", "-c", "exit 3", cwd=tmp_path)
    assert proc.returncode == 3 and "svctrace:" in proc.stderr


def test_killed_command_gives_128_plus_signal(tmp_path):
    proc = svctrace("run", "-b", "inprocess", "--", "sh", "-c", "kill -TERM $$", cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGTERM
    assert json.loads((tmp_path / "svctrace-report.json").read_text())["run"]["exit_code"] == 143


def test_unknown_backend_is_a_usage_error(tmp_path):
    proc = svctrace("run", "--backend", "dtrace", "--", "true", cwd=tmp_path)
    assert proc.returncode == 2
    assert "dtrace" in proc.stderr and "ebpf" in proc.stderr
    assert not (tmp_path / "svctrace-report.json").exists()


def test_malformed_config_is_one_sentence_naming_file_and_key(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[tool.svctrace.services]\nkafka = "9092"\n')
    proc = svctrace("run", "--", "true", cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pyproject.toml" in lines[0] and "services.kafka" in lines[0]
    assert "Traceback" not in proc.stderr


def test_missing_command_gives_127_and_a_report(tmp_path):
    proc = svctrace("run", "-b", "inprocess", "--", "no-such-command-xyz", cwd=tmp_path)
    assert proc.returncode == 127
    assert "command not found: no-such-command-xyz" in proc.stderr
    assert (tmp_path / "svctrace-report.json").exists()


SLOW_SUITE = '''
import os, socket, time
def test_first():
    socket.socket().connect_ex(("127.0.0.1", {port}))
def test_slow():
    open({flag!r}, "w").close()
    time.sleep(60)
'''


def test_sigint_is_forwarded_and_the_report_keeps_what_was_traced(tmp_path):
    flag = tmp_path / "started"
    (tmp_path / "test_slow.py").write_text(SLOW_SUITE.format(port=9, flag=str(flag)))
    proc = subprocess.Popen(SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--",
                                        sys.executable, "-m", "pytest", "-q",
                                        "-p", "no:cacheprovider", "test_slow.py"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), "the slow test never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, out + err  # pytest's own "interrupted" status, passed through
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report["tests"]["test_slow.py::test_first"]["failed_probes"]) == ["127.0.0.1:9"]
    assert report["tests"]["test_slow.py::test_slow"]["outcome"] in ("interrupted", "failed",
                                                                     "error")
    assert any("SIGINT" in note for note in report["run"]["notes"])


def test_crashed_pytest_still_leaves_a_report(tmp_path):
    (tmp_path / "test_crash.py").write_text(
        "import os, signal, socket\n"
        "def test_a():\n    socket.socket().connect_ex(('127.0.0.1', 9))\n"
        "def test_b():\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = svctrace("run", "-b", "inprocess", "--", sys.executable, "-m", "pytest", "-q",
                    "-p", "no:cacheprovider", "test_crash.py", cwd=tmp_path)
    assert proc.returncode == 128 + signal.SIGKILL
    report = json.loads((tmp_path / "svctrace-report.json").read_text())
    assert list(report["tests"]["test_crash.py::test_a"]["failed_probes"]) == ["127.0.0.1:9"]
    assert report["tests"]["test_crash.py::test_b"]["outcome"] == "interrupted"


@pytest.mark.parametrize("where,phase", [("call", "call"), ("fixture", "setup")])
def test_a_test_that_exits_the_process_is_named_with_its_phase_and_status(tmp_path, where,
                                                                            phase):
    """os._exit(3) mid-test: pytest writes nothing more; the run says which test was
    running, in which phase, and how the command ended."""
    body = "    os._exit(3)\n" if where == "call" else "    pass\n"
    (tmp_path / "test_exit.py").write_text(
        "import os, pytest\n"
        "@pytest.fixture\ndef dies():\n    os._exit(3)\n"
        "def test_before():\n    pass\n"
        f"def test_exits({'dies' if where == 'fixture' else ''}):\n{body}"
        "def test_after():\n    pass\n")
    proc = svctrace("run", "-b", "inprocess", "-o", "r.json", "--progress", "0", "--",
                    sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "test_exit.py", cwd=tmp_path)
    assert proc.returncode == 3
    report = json.loads((tmp_path / "r.json").read_text())
    outcomes = {n.split("::")[1]: t["outcome"] for n, t in report["tests"].items()}
    assert outcomes == {"test_before": "passed", "test_exits": "interrupted",
                        "test_after": "not run"}
    notes = [n for n in report["run"]["notes"] if "test_exit" in n or "did not run" in n]
    assert len(notes) == 2, report["run"]["notes"]
    assert re.fullmatch(rf"test_exit.py::test_exits was in its {phase} phase when its pytest "
                        r"process \(pid \d+\) ended; the command exited 3", notes[0]), notes
    assert notes[1] == "1 collected test did not run"
    assert "svctrace: backend inprocess, 2 tests ran (3 collected), 1 interrupted, " \
        in proc.stderr
    assert f"note: {notes[0]}" in proc.stderr


@pytest.mark.skipif(not IS_ROOT, reason="needs root to show that sudo's user is restored")
@pytest.mark.parametrize("as_root", [False, True])
def test_under_sudo_the_command_runs_as_the_invoking_user(sudo_dirs, as_root):
    home = sudo_dirs / "home"  # the report is written as nobody: a folder of theirs
    args = ["run", "-b", "inprocess", "-o", str(home / "r.json")]
    args += ["--as-root"] if as_root else []
    proc = svctrace(*args, "--", "sh", "-c", "id -u; id -g; echo $HOME", cwd=home,
                    env=SUDO_ENV)
    assert proc.returncode == 0, proc.stderr
    uid, gid, home_var = proc.stdout.split()
    want = "0" if as_root else "65534"
    assert (uid, gid) == (want, want)
    if not as_root:
        assert home_var != os.environ.get("HOME")
    assert os.stat(home / "r.json").st_uid == 65534  # --as-root is for the command only


def test_version_and_help_with_examples(tmp_path):
    assert svctrace("--version", cwd=tmp_path).stdout.startswith("svctrace, version")
    text = svctrace("run", "--help", cwd=tmp_path).stdout
    assert "Examples:" in text and "--backend" in text and "SUDO_UID" in text


def test_doctor_names_every_backend(tmp_path):
    proc = svctrace("doctor", cwd=tmp_path)
    names = [line.split()[0] for line in proc.stdout.splitlines() if not line.startswith(" ")]
    assert names[:3] == ["ebpf", "strace", "inprocess"]
    # "NOT usable" contains "usable": check each verdict's whole form, and the exit status
    lines = proc.stdout.splitlines()[:3]
    assert all(re.fullmatch(r"\S+ +(usable|NOT usable: .+)", line) for line in lines), lines
    ebpf_usable = lines[0].endswith(" usable")
    assert proc.returncode == (0 if ebpf_usable else 1)


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop exactly the eBPF capabilities")
def test_auto_falls_back_to_strace_without_bpf_capabilities_and_says_why(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import socket\ndef test_x():\n    socket.socket().connect_ex(('127.0.0.1', 9))\n")
    proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
                          + SVCTRACE + ["run", "-o", "r.json", "--", sys.executable, "-m",
                                        "pytest", "-q", "-p", "no:cacheprovider", "test_x.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "backend auto: skipped ebpf: needs root (with CAP_BPF" in proc.stderr
    assert "backend auto: using strace" in proc.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["run"]["backend"] == "strace"
    assert list(report["tests"]["test_x.py::test_x"]["failed_probes"]) == ["127.0.0.1:9"]


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"),
                    reason="needs root and setpriv to drop the eBPF capabilities")
def test_explicit_unusable_backend_is_a_clear_usage_error(tmp_path):
    proc = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--"]
                          + SVCTRACE + ["run", "--backend", "ebpf", "--", "true"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "svctrace: error: can't use backend=ebpf: needs root (with CAP_BPF+CAP_PERFMON "
        "or CAP_SYS_ADMIN, to load programs and read tracefs): run svctrace with sudo"]


def test_report_path_unwritable_at_start_is_refused_before_the_command_runs(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    proc = svctrace("run", "-b", "inprocess", "-o", "file/r.json", "--", "touch", "ran",
                    cwd=tmp_path)
    assert proc.returncode == 2  # nothing was run
    assert proc.stderr.strip().splitlines() == [
        "svctrace: error: cannot write the report to file/r.json: file is not a directory"]
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("command,expected", [("exit 0", 3), ("exit 4", 4)])
def test_unwritable_report_is_one_sentence_and_keeps_a_failing_status(tmp_path, command,
                                                                        expected):
    # Writable when checked at the start; the command makes it unwritable meanwhile.
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "r.json"
    proc = svctrace("run", "-b", "inprocess", "-o", str(target), "--", "sh", "-c",
                    f"rmdir out && echo 'a file, not a folder' > out && {command}",
                    cwd=tmp_path)
    assert proc.returncode == expected
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"svctrace: error: cannot write the report to {target}")
    assert "Traceback" not in proc.stderr


def test_ctrl_c_at_a_terminal_interrupts_pytest_once_and_leaves_a_report(tmp_path):
    """A real terminal: Ctrl-C goes to the foreground process group, which svctrace hands
    to the command, as a shell would."""
    import fcntl
    import pty
    import termios
    flag = tmp_path / "started"
    (tmp_path / "test_slow.py").write_text(SLOW_SUITE.format(port=9, flag=str(flag)))
    master, slave = pty.openpty()

    def controlling_tty():  # runs after setsid (start_new_session): adopt the pty
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(SVCTRACE + ["run", "-b", "inprocess", "-o", "r.json", "--",
                                        sys.executable, "-m", "pytest", "-q",
                                        "-p", "no:cacheprovider", "test_slow.py"],
                            cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True, preexec_fn=controlling_tty)
    os.close(slave)
    deadline = time.monotonic() + 60
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert flag.exists(), "the slow test never started"
    os.write(master, b"\x03")  # the terminal's interrupt character
    output = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: every process let go of the terminal
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(60) == 2, output.decode(errors="replace")
    os.close(master)
    text = output.decode(errors="replace")
    assert "KeyboardInterrupt" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report["tests"]["test_slow.py::test_first"]["failed_probes"]) == ["127.0.0.1:9"]
    assert report["tests"]["test_slow.py::test_slow"]["outcome"] in ("interrupted", "failed")
    assert not any("SIGINT" in note for note in report["run"]["notes"])  # not sent to svctrace


def test_doctor_asks_each_backend_class_for_its_details():
    """diagnose() is part of the Backend protocol: doctor lists the ebpf checks by calling
    it, and a backend without extra checks inherits the empty default."""
    from svctrace.capture import backend_class
    from svctrace.capture.base import Backend
    from svctrace.cli.doctor import _details
    assert backend_class("strace").diagnose() == [] == Backend.diagnose()
    checks = [check for check, _ok, _detail in _details("ebpf")]
    assert checks[:1] == [next(iter(backend_class("ebpf").diagnose()))[0]]
    assert "compile+load" in checks


@pytest.mark.skipif(not IS_ROOT or not shutil.which("setpriv"),
                    reason="needs root and setpriv to become the non-root user nobody")
def test_doctor_and_run_as_a_plain_user_say_ebpf_needs_root(sudo_dirs):
    """A non-root user on a normal host: tracefs is mode 0700 (the kernel's), so it may not
    even look inside. doctor answers in sentences, and the run's note is the same one."""
    tracing = os.stat("/sys/kernel/tracing")
    if tracing.st_mode & 0o005:
        pytest.skip("this host's /sys/kernel/tracing is readable by others")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
    home = sudo_dirs / "home"
    env = {**os.environ, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
    doctor = subprocess.run(as_nobody + SVCTRACE + ["doctor"], cwd=home, env=env,
                            capture_output=True, text=True, timeout=120)
    assert "Traceback" not in doctor.stderr, doctor.stderr
    lines = doctor.stdout.splitlines()
    assert lines[0].startswith("ebpf       NOT usable: needs root ("), lines[0]
    assert lines[3] == "auto       would use strace" if shutil.which("strace") else \
        "auto       would use inprocess"
    assert "  ebpf: FAIL tracefs: needs root (/sys/kernel/tracing is readable only by root)" \
        in doctor.stdout
    assert doctor.returncode == 1  # the preferred backend is unusable: as documented
    (home / "test_a.py").write_text("def test_a():\n    pass\n")
    run = subprocess.run(as_nobody + SVCTRACE + ["run", "-b", "auto", "-o", "r.json",
                                                 "--progress", "0", "--", sys.executable,
                                                 "-m", "pytest", "-q", "-p",
                                                 "no:cacheprovider", "test_a.py"],
                         cwd=home, env=env, capture_output=True, text=True, timeout=120)
    assert "backend auto: skipped ebpf: needs root (" in run.stderr
    assert "Errno" not in run.stderr and "cannot prepare" not in run.stderr, run.stderr


def _good_report(tmp_path) -> bytes:
    (tmp_path / "test_a.py").write_text("def test_a():\n    pass\n")
    proc = svctrace("run", "-b", "inprocess", "-o", "r.json", "--progress", "0", "--",
                    sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "test_a.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return (tmp_path / "r.json").read_bytes()


@pytest.mark.parametrize("command,code,sentence", [
    (["pytestt", "-q"], 127,
     "svctrace: pytestt exited 127 (command not found) before running any test: r.json "
     "still holds the last report; this run's was not written"),
    ([sys.executable, "-m", "pytest", "--bogus"], 4,
     "svctrace: pytest exited 4 (usage error) before running any test: r.json still holds "
     "the last report; this run's was not written"),
    (["sh", "-c", "exit 3"], 3,
     "svctrace: sh exited 3 and no test was seen to run: r.json still holds the last "
     "report; this run's was not written"),
], ids=["command-not-found", "pytest-usage-error", "no-pytest"])
def test_a_typo_never_replaces_the_last_report(tmp_path, command, code, sentence):
    good = _good_report(tmp_path)
    proc = svctrace("run", "-b", "inprocess", "-o", "r.json", "--progress", "0", "--",
                    *command, cwd=tmp_path)
    assert proc.returncode == code, proc.stderr
    assert (tmp_path / "r.json").read_bytes() == good
    assert sentence in proc.stderr.splitlines(), proc.stderr
    assert "tests ran" not in proc.stderr  # no summary of nothing
    # the plugin hint (tox, nox) only where the command ran and no pytest wrote markers,
    # and once
    assert proc.stderr.count("tox or nox") == (1 if command[0] == "sh" else 0), proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_run_with_no_test_and_no_earlier_report_writes_it_and_says_where(tmp_path):
    proc = svctrace("run", "-b", "inprocess", "-o", "r.json", "--progress", "0", "--",
                    sys.executable, "-m", "pytest", "--bogus", cwd=tmp_path)
    assert proc.returncode == 4
    assert ("svctrace: pytest exited 4 (usage error) before running any test; this run's "
            "report (no tests) is r.json") in proc.stderr.splitlines()
    assert json.loads((tmp_path / "r.json").read_text())["run"]["exit_code"] == 4


def test_a_writer_killed_mid_write_never_leaves_half_a_report(tmp_path):
    """Reports go to a temporary file renamed over the old one: SIGKILL at any moment
    leaves the old report or the new one, whole."""
    target = tmp_path / "r.json"
    target.write_text(json.dumps({"schema": "svctrace-report/1", "n": -1}))
    writer = ("import json, sys\n"
              "from svctrace.report.files import write_report\n"
              "big = {'schema': 'svctrace-report/1', 'tests': ['x' * 100] * 200_000}\n"
              "for n in range(1000):\n"
              "    big['n'] = n\n"
              "    write_report(big, sys.argv[1])\n"
              "    print(n, flush=True)\n")
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", writer, str(target)],
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # one write done: the next is under way
        proc.kill()
        proc.wait()
        proc.stdout.close()
        assert json.loads(target.read_text())["schema"] == "svctrace-report/1"


@pytest.mark.skipif(not IS_ROOT, reason="needs root: access() lets root write anywhere, "
                                        "which is what this checks past")
def test_a_report_path_only_root_seems_to_write_is_refused_before_the_command(tmp_path):
    proc = svctrace("run", "-b", "inprocess", "-o", "/proc/r.json", "--", "touch", "ran",
                    cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "svctrace: error: cannot write the report to /proc/r.json: /proc does not take new "
        "files (No such file or directory)"]
    assert not (tmp_path / "ran").exists()
