"""Files read and written as the user who ran sudo: the kernel refuses what they could not."""
from __future__ import annotations

import errno
import os
import pwd
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from svctrace.errors import SvctraceError

SUDO_HINT = ("under sudo, svctrace reads and writes files with the permissions of the user "
             "who ran sudo")


class UserFileError(SvctraceError):
    """A file was refused or could not be read or written; `reason` is one clause."""

    def __init__(self, path: str | os.PathLike, reason: str, what: str = "",
                 verb: str = "read") -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"cannot {verb} {what + ' to ' if what else ''}{path}: {reason}")


class OutputError(UserFileError):
    """An output file was refused or could not be written."""

    def __init__(self, path: str | os.PathLike, reason: str, what: str = "") -> None:
        super().__init__(path, reason, what, "write")


class _Failed(Exception):
    """What went wrong, as one clause, whichever process acted."""


class _Refused(Exception):
    """Raised inside the writer: the path breaks a rule (link, not ours), not the kernel."""


class _Denied(_Refused):
    """The acting user lacks permission: under sudo, worth saying whose permissions count."""


@dataclass(frozen=True)
class Owner:
    """The user whose permissions the kernel checks when svctrace reads or writes a file."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    name: str


def invoking_user(environ: dict | None = None) -> Owner | None:
    """Under sudo (euid 0, SUDO_UID set and not 0): the user who ran sudo; else None."""
    env = os.environ if environ is None else environ
    raw = env.get("SUDO_UID", "")
    if os.geteuid() != 0 or not raw:
        return None
    if not raw.isdigit():
        # Fail closed: writing as root instead would let a user write where only root may.
        raise SvctraceError(f"SUDO_UID={raw!r} is not a user id")
    uid = int(raw)
    if uid == 0:
        return None
    try:
        entry = pwd.getpwuid(uid)
        gid = int(env.get("SUDO_GID") or entry.pw_gid)
        return Owner(uid, gid, tuple(os.getgrouplist(entry.pw_name, gid)), entry.pw_name)
    except KeyError:
        gid = int(env.get("SUDO_GID") or uid)
        return Owner(uid, gid, (gid,), env.get("SUDO_USER") or str(uid))


# The CLI process acts for the invoking user (cli.main sets this); a library caller such as
# the pytest plugin writes as itself. Process-wide, like the umask it resembles.
_acting_for: Owner | None = None


def act_for(owner: Owner | None) -> Owner | None:
    """Read and write every later file as `owner` (None: as this process); returns the old."""
    global _acting_for
    previous, _acting_for = _acting_for, owner
    return previous


def check_writable(*paths: str | os.PathLike, what: str = "") -> None:
    """Early check (before a long command runs): each path could be written now. Leaves
    nothing behind (a probe file is created and removed); the write itself checks again."""
    for path in paths:
        _output(lambda p=path: _check(os.fspath(p)), path, what)


def write_file(path: str | os.PathLike, data: bytes, mode: int = 0o644, what: str = "") -> Path:
    """Replace `path` atomically: a new file created exclusively next to it, then renamed."""
    _output(lambda: _write(os.fspath(path), data, mode), path, what)
    return Path(path)


def make_dir(path: str | os.PathLike, what: str = "") -> None:
    """Create a folder (and its parents) for outputs, as the user (`svctrace html -o`)."""
    _output(lambda: os.makedirs(os.fspath(path), mode=0o755, exist_ok=True), path, what)


def append_file(path: str | os.PathLike, data: bytes, what: str = "") -> None:
    """Append to a regular file of ours (e.g. $GITHUB_STEP_SUMMARY), creating it if absent."""
    _output(lambda: _append(os.fspath(path), data), path, what)


def read_file(path: str | os.PathLike) -> bytes:
    """An input (report, plan) read as the user: sudo must not let them read root's files."""
    try:
        return _as_owner(lambda: _read(os.fspath(path)))
    except _Failed as exc:
        raise UserFileError(path, str(exc)) from None


def _output(action: Callable[[], None], path, what: str) -> None:
    try:
        _as_owner(action)
    except _Failed as exc:
        raise OutputError(path, str(exc), what) from None


# -- the acting side: runs as the owner (in a forked child under sudo) --------------------
def _me() -> str:
    return _name(os.geteuid())


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _split(path: str) -> tuple[str, str]:
    folder, name = os.path.split(path)
    if not name or name in (".", ".."):
        raise _Refused("it names a directory, not a file")
    return folder, name


def _check_existing(name: str, dir_fd: int | None = None) -> None:
    """Only a regular file we own may be replaced: never a link, device, folder, or a file
    of another user (root's /etc/hosts, a link planted in /tmp)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _Refused("it is a symbolic link, and svctrace neither follows nor replaces links")
    if not stat.S_ISREG(st.st_mode):
        raise _Refused("it exists and is not a regular file")
    if st.st_uid != os.geteuid():
        raise _Refused(f"it belongs to {_name(st.st_uid)}, not to {_me()}")


def _check(path: str) -> None:
    folder, _ = _split(path)
    probe = folder or "."
    while not os.path.lexists(probe):  # the write will create the missing folders
        up = os.path.dirname(probe.rstrip("/")) or "."
        if up == probe:
            break
        probe = up
    if not os.path.isdir(probe):
        raise _Refused(f"{probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):  # real uid: the owner's, after the fork
        raise _Denied(f"{_me()} may not create files in {probe}")
    if probe == (folder or "."):
        _check_existing(path)
    # access() says yes to root everywhere, also in /proc, /sys or a read-only mount:
    # create (and remove) what the write will create there, so the answer is the kernel's.
    dfd = os.open(probe, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if probe == (folder or "."):
            tmp, fd = _create_temp(os.path.basename(path), dfd, 0o600)
            os.close(fd)
            os.unlink(tmp, dir_fd=dfd)
        else:  # the write makes the missing folders below it
            tmp = f".svctrace-probe.{secrets.token_hex(6)}"
            os.mkdir(tmp, 0o700, dir_fd=dfd)
            os.rmdir(tmp, dir_fd=dfd)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise _Denied(f"{_me()} may not create files in {probe}") from None
        raise _Refused(f"{probe} does not take new files "
                       f"({exc.strerror or os.strerror(exc.errno or 0)})") from None
    finally:
        os.close(dfd)


def _write(path: str, data: bytes, mode: int) -> None:
    folder, name = _split(path)
    if folder:
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise _Refused(f"{folder} is not a directory")
        os.makedirs(folder, exist_ok=True)
    # Everything below is relative to one open folder: a folder swapped mid-write cannot
    # redirect the temporary file or the rename.
    dfd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check_existing(name, dfd)
        tmp, fd = _create_temp(name, dfd, mode)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            _check_existing(name, dfd)  # again, just before replacing it
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


def _create_temp(name: str, dir_fd: int, mode: int) -> tuple[str, int]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(100):
        tmp = f".{name[:200]}.{secrets.token_hex(6)}.tmp"  # 255-byte name limit
        try:
            return tmp, os.open(tmp, flags, mode, dir_fd=dir_fd)
        except FileExistsError:
            continue
    raise OSError(errno.EEXIST, "no unused temporary name next to it")


def _append(path: str, data: bytes) -> None:
    folder, name = _split(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    _check_existing(path)
    # O_NOFOLLOW: a link swapped in after the check is refused (ELOOP); O_NONBLOCK: a FIFO
    # swapped in does not hang us before fstat rejects it.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                 | os.O_NONBLOCK, 0o644)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise _Refused("it is not a regular file of " + _me())
        os.set_blocking(fd, True)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


# -- the deciding side: who acts, and how their failure becomes one sentence --------------
def _as_owner(action: Callable[[], bytes | None]) -> bytes:
    """Run `action` as the acting owner; its bytes, or _Failed. Under sudo that is a forked
    child with the owner's uid, gid and groups, so the kernel applies that user's permissions
    to every step (per-thread fsuid is not in Python's os module, and setuid in-process is
    irreversible)."""
    owner = _acting_for
    if owner is None or owner.uid == os.geteuid():
        try:
            return action() or b""
        except _Refused as exc:
            raise _Failed(str(exc)) from None
        except OSError as exc:
            raise _Failed(_describe(exc.errno, exc.strerror or str(exc), None)) from None
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into the caller's code
        try:
            os.close(rfd)
            with os.fdopen(wfd, "wb") as out:  # a whole report may exceed the pipe: stream
                out.write(_outcome(owner, action))
        finally:
            os._exit(0)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as fh:
        answer = fh.read()
    os.waitpid(pid, 0)
    kind, _, payload = answer.partition(b"\0")
    if kind == b"ok":
        return payload
    text = payload.decode("utf-8", "replace")
    if kind in (b"refused", b"denied"):
        raise _Failed(f"{text} ({SUDO_HINT})" if kind == b"denied" else text)
    if kind.isdigit():
        raise _Failed(_describe(int(kind), text, owner))
    raise _Failed(text or "the process acting for the user died")


def _outcome(owner: Owner, action: Callable[[], bytes | None]) -> bytes:
    try:
        os.setgroups(list(owner.groups))
        os.setgid(owner.gid)
        os.setuid(owner.uid)
        return b"ok\0" + (action() or b"")
    except _Refused as exc:
        return f"{'denied' if isinstance(exc, _Denied) else 'refused'}\0{exc}".encode()
    except OSError as exc:
        return f"{exc.errno or 0}\0{exc.strerror or exc}".encode()
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        return f"error\0{type(exc).__name__}: {exc}".encode()


def _describe(err: int, text: str, owner: Owner | None) -> str:
    if err in (errno.EACCES, errno.EPERM) and owner is not None:
        return f"permission denied for {owner.name} ({SUDO_HINT})"
    return text or os.strerror(err)
