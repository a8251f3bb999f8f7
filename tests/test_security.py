"""Under sudo, files are written as the invoking user; run folders are private and
cleaned even after a SIGKILL. Real `svctrace run` subprocesses with sudo's environment."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from svctrace.userfiles import OutputError, act_for, append_file, write_file
from tests.support.e2e import SVCTRACE
from tests.support.sudo import NOBODY, SUDO_ENV, sudo_dirs  # noqa: F401 - a fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to act as sudo and drop to nobody")
SUDO_HINT = ("(under sudo, svctrace reads and writes files with the permissions of the "
             "user who ran sudo)")


def sudo_svctrace(base: Path, *args, cwd=None, env=None, **kw):
    """`svctrace ARGS` as `nobody` would run it through sudo, with a TMPDIR of its own."""
    return subprocess.run(SVCTRACE + list(args), cwd=cwd or base / "home", capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120,
                          env={**os.environ, **SUDO_ENV, "TMPDIR": str(base / "tmp"),
                               **(env or {})}, **kw)


def root_file(path: Path, text: str = "keep\n") -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def run_folders(base: Path) -> list[str]:
    return sorted(p.name for p in (base / "tmp").iterdir() if p.name.startswith("svctrace-run-"))


# -- refused before the command starts ----------------------------------------------------
@pytest.mark.parametrize("as_root", [False, True])
def test_report_in_a_root_only_folder_is_refused_and_nothing_is_created(sudo_dirs, as_root):
    (sudo_dirs / "etc").mkdir(mode=0o755)  # like /etc: root's, readable by everyone
    report = sudo_dirs / "etc" / "r.json"
    proc = sudo_svctrace(sudo_dirs, "run", "-b", "inprocess", "-o", str(report),
                         *(["--as-root"] if as_root else []), "--", "sh", "-c", "touch ran")
    assert proc.returncode == 2, proc.stderr  # nothing was run
    assert proc.stderr.strip().splitlines() == [
        f"svctrace: error: cannot write the report to {report}: nobody may not create files "
        f"in {sudo_dirs / 'etc'} {SUDO_HINT}"]
    assert list((sudo_dirs / "etc").iterdir()) == []
    assert not (sudo_dirs / "home" / "ran").exists()
    assert run_folders(sudo_dirs) == []


def test_an_existing_root_owned_file_is_untouched(sudo_dirs):
    # In the user's own folder the kernel would let them replace it: svctrace does not.
    report = root_file(sudo_dirs / "home" / "r.json")
    proc = sudo_svctrace(sudo_dirs, "run", "-b", "inprocess", "-o", "r.json", "--", "true")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "svctrace: error: cannot write the report to r.json: it belongs to root, not to nobody"]
    assert report.read_text() == "keep\n" and report.stat().st_uid == 0


def test_a_symlink_at_the_report_path_is_not_followed(sudo_dirs):
    target = root_file(sudo_dirs / "hosts")
    link = sudo_dirs / "home" / "r.json"
    link.symlink_to(target)
    proc = sudo_svctrace(sudo_dirs, "run", "-b", "inprocess", "-o", "r.json", "--", "true")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "r.json: it is a symbolic link, and svctrace neither follows nor replaces links")
    assert target.read_text() == "keep\n" and link.is_symlink()


# -- found only at the end (the path changed during the run): the exit status passes -------
LATE = {
    # The command, as nobody, plants a link to a root file where the report will go.
    "symlink planted": (False, "ln -s {base}/hosts r.json", "it is a symbolic link"),
    # The command, as root (--as-root), leaves a root-owned file there.
    "root-owned file": (True, "echo keep > r.json", "it belongs to root, not to nobody"),
    # The command, as root, turns the report's folder into a root-only one.
    "root-only folder": (True, "mkdir -m 700 out", "permission denied for nobody"),
}


@pytest.mark.parametrize("status,expected", [(0, 3), (5, 5)])
@pytest.mark.parametrize("case", LATE)
def test_a_path_spoiled_during_the_run_is_refused_and_the_status_passes(sudo_dirs, case,
                                                                        status, expected):
    as_root, command, reason = LATE[case]
    root_file(sudo_dirs / "hosts")
    report = "out/r.json" if "folder" in case else "r.json"
    proc = sudo_svctrace(sudo_dirs, "run", "-b", "inprocess", "-o", report,
                         *(["--as-root"] if as_root else []), "--", "sh", "-c",
                         command.format(base=sudo_dirs) + f"; exit {status}")
    assert proc.returncode == expected, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"svctrace: error: cannot write the report to {report}: {reason}")
    assert (sudo_dirs / "hosts").read_text() == "keep\n"
    home = sudo_dirs / "home"
    leftovers = [p.name for p in home.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []  # the temporary file is removed when the rename is refused
    if case == "root-owned file":
        assert (home / "r.json").read_text() == "keep\n"
    if case == "root-only folder":
        assert list((home / "out").iterdir()) == []


# -- what a good run leaves --------------------------------------------------------------
def test_report_is_the_users_and_the_marker_folder_is_private_and_removed(sudo_dirs):
    proc = sudo_svctrace(sudo_dirs, "run", "-b", "inprocess", "-q", "-o", "new/r.json", "--",
                         "sh", "-c", 'stat -c "%a %u" "$(dirname "$SVCTRACE_PIPE")"; exit 4')
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout.split() == ["700", str(NOBODY)]
    for path in (sudo_dirs / "home" / "new", sudo_dirs / "home" / "new" / "r.json"):
        assert path.stat().st_uid == NOBODY  # the folder too: created as nobody
    assert json.loads((sudo_dirs / "home" / "new" / "r.json").read_text())["run"]["exit_code"] == 4
    assert run_folders(sudo_dirs) == []


def _start_slow_run(base: Path, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        SVCTRACE + ["run", "-b", "inprocess", "-o", f"{name}.json", "--", "sh", "-c",
                    f"echo $$ > {name}.pid; sleep 60"],
        cwd=base / "home", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL, env={**os.environ, **SUDO_ENV, "TMPDIR": str(base / "tmp")})


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), f"{path} never appeared"


def test_a_sigkilled_run_leaves_no_private_folder_after_the_next_run(sudo_dirs):
    home = sudo_dirs / "home"
    killed = _start_slow_run(sudo_dirs, "killed")
    try:
        _wait_for(home / "killed.pid")
        folders = run_folders(sudo_dirs)
        assert folders and folders[0].startswith(f"svctrace-run-{killed.pid}-")
        runner = (sudo_dirs / "tmp" / folders[0] / "runner").read_text()
        assert runner.startswith(f"pid {killed.pid}\n")

        # A concurrent run leaves a live runner's folder alone, and says nothing about it.
        proc = sudo_svctrace(sudo_dirs, "run", "-b", "inprocess", "-o", "a.json", "--", "true")
        assert proc.returncode == 0, proc.stderr
        assert run_folders(sudo_dirs) == folders
        notes = json.loads((home / "a.json").read_text())["run"]["notes"]
        assert not [note for note in notes if "svctrace-run-" in note]

        killed.kill()  # SIGKILL: no finally, no cleanup in the runner
        killed.wait(10)
    finally:
        killed.kill()
        killed.wait(10)
        if (home / "killed.pid").exists():  # the command runs in its own process group
            os.killpg(int((home / "killed.pid").read_text()), signal.SIGKILL)
    assert run_folders(sudo_dirs) == folders  # left behind

    proc = sudo_svctrace(sudo_dirs, "run", "-b", "inprocess", "-o", "b.json", "--",
                         "sh", "-c", "exit 6")
    assert proc.returncode == 6, proc.stderr
    assert run_folders(sudo_dirs) == []
    notes = json.loads((home / "b.json").read_text())["run"]["notes"]
    assert [note for note in notes if "svctrace-run-" in note] == [
        f"removed {sudo_dirs / 'tmp' / folders[0]}, left by a killed svctrace run "
        f"(pid {killed.pid})"]


def test_the_sweep_follows_no_planted_link(sudo_dirs):
    """Root removes dead runs' folders in a shared /tmp: links planted there or inside one
    are removed or left, never followed."""
    target_dir = sudo_dirs / "precious"
    target_dir.mkdir()
    root_file(target_dir / "data")
    dead = _dead_pid()
    tmp = sudo_dirs / "tmp"
    (tmp / f"svctrace-run-{dead}-link").symlink_to(target_dir)
    planted = tmp / f"svctrace-strace-{dead}-dir"  # any kind: a backend's folder as well
    planted.mkdir()
    (planted / "markers").symlink_to(target_dir / "data")
    (planted / "sub").symlink_to(target_dir)
    os.chown(planted, NOBODY, NOBODY, follow_symlinks=False)
    proc = sudo_svctrace(sudo_dirs, "run", "-b", "inprocess", "-o", "r.json", "--", "true")
    assert proc.returncode == 0, proc.stderr
    assert (target_dir / "data").read_text() == "keep\n"
    assert (tmp / f"svctrace-run-{dead}-link").is_symlink() and not planted.exists()
    notes = json.loads((sudo_dirs / "home" / "r.json").read_text())["run"]["notes"]
    assert any(f"left alone {tmp}/svctrace-run-{dead}-link" in note for note in notes)


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- other commands that write files -------------------------------------------------------
def _tiny_report(base: Path) -> Path:
    proc = sudo_svctrace(base, "run", "-b", "inprocess", "-q", "-o", "r.json", "--", "true")
    assert proc.returncode == 0, proc.stderr
    return base / "home" / "r.json"


def test_merge_output_is_written_as_the_user_and_refused_where_they_cannot_write(sudo_dirs):
    report = _tiny_report(sudo_dirs)
    proc = sudo_svctrace(sudo_dirs, "merge", "-o", str(sudo_dirs / "m.json"), str(report))
    assert proc.returncode == 2  # an output path the user may not write: nothing done
    assert proc.stderr.strip().splitlines() == [
        f"svctrace: error: cannot write {sudo_dirs / 'm.json'}: nobody may not create files in "
        f"{sudo_dirs} {SUDO_HINT}"]
    assert not (sudo_dirs / "m.json").exists()
    proc = sudo_svctrace(sudo_dirs, "merge", "-o", "m.json", str(report))
    assert proc.returncode == 0, proc.stderr
    assert (sudo_dirs / "home" / "m.json").stat().st_uid == NOBODY


def test_inputs_are_read_as_the_user(sudo_dirs):
    """Reading needs no root either: sudo must not print or merge a report only root reads."""
    secret = sudo_dirs / "secret"
    secret.mkdir(mode=0o700)
    shutil.copy(_tiny_report(sudo_dirs), secret / "r.json")
    for args in (["summary", str(secret / "r.json")],
                 ["merge", "-o", "m.json", str(secret / "r.json")]):
        proc = sudo_svctrace(sudo_dirs, *args)
        assert proc.returncode == 1, proc.stderr
        assert f"cannot read report {secret / 'r.json'}: permission denied for nobody" \
            in proc.stderr
    assert not (sudo_dirs / "home" / "m.json").exists()


TIERS = '[tool.svctrace]\n[[tool.svctrace.tiers]]\nname = "full"\nservices = ["postgres"]\n'


def test_tiers_outputs_are_the_users_and_all_are_checked_before_any_is_written(sudo_dirs):
    home = sudo_dirs / "home"
    (home / "pyproject.toml").write_text(TIERS)
    summary = root_file(sudo_dirs / "summary.md", "")
    (home / "summary.md").symlink_to(summary)
    args = ["tiers", "--one-tier", "--plan-out", "plan.json", "--lists-dir", "lists"]
    proc = sudo_svctrace(sudo_dirs, *args, "--summary-out", "summary.md")
    assert proc.returncode == 2
    assert "summary.md: it is a symbolic link" in proc.stderr
    assert not (home / "plan.json").exists() and not (home / "lists").exists()
    assert summary.read_text() == ""

    proc = sudo_svctrace(sudo_dirs, *args, "--summary-out", "steps/summary.md")
    assert proc.returncode == 0, proc.stderr
    for name in ("plan.json", "lists", "lists/full.txt", "steps/summary.md"):
        assert (home / name).stat().st_uid == NOBODY, name


# -- the writer itself (in-process, fast) ---------------------------------------------------
def test_writer_refuses_devices_folders_and_fifos_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    cases = {"/dev/null": "it exists and is not a regular file",
             str(tmp_path / "folder"): "it exists and is not a regular file",
             str(tmp_path / "fifo"): "it exists and is not a regular file",
             str(tmp_path) + "/": "it names a directory, not a file"}
    for path, reason in cases.items():
        for write in (lambda p: write_file(p, b"x"), lambda p: append_file(p, b"x")):
            with pytest.raises(OutputError) as info:
                write(path)
            assert info.value.reason == reason, path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "folder"]


def test_writer_acting_for_a_user_gets_exactly_their_permissions(sudo_dirs):
    from svctrace.userfiles import Owner
    previous = act_for(Owner(NOBODY, NOBODY, (NOBODY,), "nobody"))
    try:
        write_file(sudo_dirs / "home" / "ok.json", b"{}\n")
        append_file(sudo_dirs / "home" / "ok.md", b"a\n")
        append_file(sudo_dirs / "home" / "ok.md", b"b\n")
        with pytest.raises(OutputError, match="nobody may not|permission denied for nobody"):
            write_file(sudo_dirs / "root.json", b"{}\n")
    finally:
        act_for(previous)
    assert (sudo_dirs / "home" / "ok.md").read_text() == "a\nb\n"
    assert (sudo_dirs / "home" / "ok.json").stat().st_uid == NOBODY
    assert not (sudo_dirs / "root.json").exists()


# -- a real sudo, where one is installed and lets nobody in without a password ------------
def _nobody_can_sudo() -> bool:
    if not shutil.which("sudo") or not shutil.which("setpriv"):
        return False
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", "sudo", "-n", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _nobody_can_sudo(),
                    reason="needs /usr/bin/sudo and setpriv, and a NOPASSWD sudo rule for "
                           "nobody (not installed system-wide just for this test)")
def test_real_sudo_refuses_a_root_only_report_path(sudo_dirs):
    proc = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "sudo", "-n", *SVCTRACE, "run", "-b", "inprocess",
                           "-o", str(sudo_dirs / "r.json"), "--", "true"],
                          cwd=sudo_dirs / "home", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "nobody may not create files" in proc.stderr
    assert not (sudo_dirs / "r.json").exists()
