"""Private scratch folders of one run (0700, named after the runner's pid), and sweeping
those a killed runner (SIGKILL runs no cleanup) left behind."""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile

from svctrace.kernel import pidns

# svctrace-<kind>-<runner pid>-<random>: "run" for the runner's, others for a backend's own.
_NAME = re.compile(r"^svctrace-([a-z]+)-([0-9]+)-")
RUNNER_FILE = "runner"  # "pid <pid>\nstart <ticks>\npidns <inode>\n": who made the folder


def make_private_dir(uid: int | None = None, gid: int | None = None, kind: str = "run") -> str:
    """A new 0700 folder `svctrace-<kind>-<pid>-<random>` in the temp dir, owned by `uid`
    (the user whose processes write into it) when given."""
    assert re.fullmatch(r"[a-z]+", kind), kind
    # 0700, created exclusively
    path = tempfile.mkdtemp(prefix=f"svctrace-{kind}-{os.getpid()}-")
    me = _identity(os.getpid())
    fd = os.open(os.path.join(path, RUNNER_FILE),
                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"pid {os.getpid()}\nstart {me[0]}\npidns {_pidns()}\n")
    if uid is not None:
        os.chown(path, uid, -1 if gid is None else gid)
    return path


def remove_private_dir(path: str) -> None:
    # rmtree works through file descriptors on Linux: a link planted inside is removed,
    # never followed (shutil.rmtree.avoids_symlink_attacks).
    shutil.rmtree(path, ignore_errors=True)


def sweep_leftovers(folder: str | None = None) -> list[str]:
    """Remove the folders of runners that are dead; one note per folder removed or not
    removable. Folders of live runners (concurrent runs) are left alone silently."""
    folder = folder or tempfile.gettempdir()
    notes = []
    try:
        entries = [(e, m) for e in os.scandir(folder) if (m := _NAME.match(e.name))]
    except OSError:
        return notes
    for entry, match in entries:
        pid = int(match.group(2))
        if pid == os.getpid():
            continue
        if not entry.is_dir(follow_symlinks=False):
            notes.append(f"left alone {entry.path}: named like a run folder of svctrace, but "
                         "not a folder")
            continue
        if _maybe_alive(entry.path, pid):
            continue
        try:
            shutil.rmtree(entry.path)
        except OSError as exc:
            notes.append(f"could not remove {entry.path}, left by a killed svctrace run "
                         f"(pid {pid}): {exc.strerror or exc}")
        else:
            notes.append(f"removed {entry.path}, left by a killed svctrace run (pid {pid})")
    return notes


def _maybe_alive(path: str, pid: int) -> bool:
    """True unless the runner is surely gone; when in doubt (another pid namespace), keep."""
    recorded = _read_runner_file(path)
    if recorded.get("pidns") not in (None, str(_pidns())):
        return True  # its pid means nothing here
    alive = _identity(pid)
    if alive is None:
        return False
    start, state = alive
    if state in ("Z", "X"):
        return False  # killed, not yet reaped by its parent
    return recorded.get("start") in (None, start)  # another start time: the pid was reused


def _read_runner_file(path: str) -> dict[str, str]:
    try:  # the folder belongs to the user: expect anything in it, block on nothing
        fd = os.open(os.path.join(path, RUNNER_FILE),
                     os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return {}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {}
        text = os.read(fd, 256).decode("ascii", "replace")
    finally:
        os.close(fd)
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)


def _identity(pid: int) -> tuple[str, str] | None:
    """(start time in clock ticks since boot, state) of a live pid, else None."""
    # Read raw, not through psutil: the runner asks this for itself before the command
    # starts, and psutil's import (10-20 ms measured) would lengthen every run's start-up.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19], fields[0]  # proc(5): field 22 starttime, field 3 state


def running_since(pid: int) -> str | None:
    """The start time of `pid` if it runs (not gone, not a zombie): with the pid, it names
    one process across pid reuse (what a leftover of a killed runner records)."""
    found = _identity(pid)
    return None if found is None or found[1] in ("Z", "X") else found[0]


def _pidns() -> int:
    try:
        return pidns.current().inode
    except OSError:
        return 0
