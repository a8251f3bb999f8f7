"""Streaming parser of `strace -f -yy --absolute-timestamps` output into svctrace records (pure)."""
from __future__ import annotations

import errno as _errno
import functools
import re
import signal as _signal
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Callable

from svctrace.events import Destination, Event, ProcessEvent

Record = Event | ProcessEvent

# "PID[<comm>]  SEC.FRAC REST"; `-o FILE -f` always prefixes the pid; -Y would add <comm>.
_LINE = re.compile(r"(?:\[pid\s+)?(\d+)\]?(?:<[^>]*>)?\s+(\d+)(?:\.(\d+))?\s+(.*)")
_RESUMED = re.compile(r"<\.\.\. ([\w]+) resumed>(.*)")
_UNFINISHED = " <unfinished ...>"
_PID_CHANGED = re.compile(r"(.*) <pid changed to (\d+) \.\.\.>")
_EXIT_MSG = re.compile(
    r"\+\+\+ (?:exited with (\d+)|killed by (\S+)(?: \(core dumped\))?"
    r"|superseded by execve in pid (\d+)) \+\+\+")
# First argument: an fd, decorated by -yy as "3<TCP:[a:p->b:q]>", "5</path>", "4<pipe:[9]>".
_FD_ARG = re.compile(r"(-?\d+)(?:<([A-Za-z][\w-]*):\[(.*?)\]>|<(.*?)>)?(?=,|$)")
_INET_END = re.compile(r"\[?([^\[\]]*?)\]?:(\d+)")
_UNIX_BODY = re.compile(r"(\d+)(?:->(\d+))?(?:,(@?)\"((?:[^\"\\]|\\.)*)\")?")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"(\.\.\.)?')
_ESC = re.compile(r"\\(x[0-9a-fA-F]{2}|[0-7]{1,3}|.)")
_SIMPLE_ESC = {"n": "\n", "t": "\t", "r": "\r", "v": "\v", "f": "\f", "a": "\a", "b": "\b"}
_SIN_PORT = re.compile(r"sin6?_port=htons\((\d+)\)")
_SIN_ADDR = re.compile(r'inet_addr\("([^"]*)"\)')
_SIN6_ADDR = re.compile(r'inet_pton\(AF_INET6, "([^"]*)"')
_SUN_PATH = re.compile(r'sun_path=(@?)"((?:[^"\\]|\\.)*)"')
_CLONE_FLAGS = re.compile(r"flags=([\w|]+)")
_ERRNO_N = re.compile(r"\(errno (\d+)\)")
_RET_VALUE = re.compile(r"(-?\d+|0x[0-9a-fA-F]+)(?:<(.*)>)?")

# -yy protocol names (strace src/socketutils.c) -> (family, transport).
_PROTOS = {
    "TCP": ("inet", "tcp"), "TCPv6": ("inet6", "tcp"),
    "UDP": ("inet", "udp"), "UDPv6": ("inet6", "udp"),
    "UDPLITE": ("inet", "udp"), "UDPLITEv6": ("inet6", "udp"),
    "MPTCP": ("inet", "tcp"), "MPTCPv6": ("inet6", "tcp"),
    "UNIX": ("unix", "unix"), "UNIX-STREAM": ("unix", "unix"),
    "UNIX-DGRAM": ("unix", "unix"), "UNIX-SEQPACKET": ("unix", "unix"),
    "NETLINK": ("netlink", "other"),
}
_SENDS = frozenset({"send", "sendto", "sendmsg", "sendmmsg", "write", "writev",
                    "sendfile", "sendfile64", "splice"})
_CLONES = frozenset({"clone", "clone2", "clone3", "fork", "vfork"})
_CLONE_THREAD, _CLONE_FILES, _CLONE_PARENT = 0x10000, 0x400, 0x8000
# A connect that returned one of these leaves the socket (being) connected to the address.
_CONNECTING = frozenset({0, -_errno.EINPROGRESS, -_errno.EALREADY, -_errno.EISCONN,
                         -_errno.EAGAIN})
_TASK_COMM_LEN = 15  # kernel TASK_COMM_LEN (16) minus the NUL


@dataclass(frozen=True, slots=True)
class _Sock:
    """A socket fd as -yy decorated it."""

    family: str | None      # None: "socket:[inode]" (strace could not ask sock_diag)
    transport: str
    inode: int | None = None
    local: Destination | None = None   # bound name (inet local end, unix own path)
    peer: Destination | None = None    # inet peer; never known for unix clients
    proto: str = ""


@dataclass(frozen=True, slots=True)
class _Fd:
    """What the parser learned about one fd from connect/bind (joined to later sends)."""

    peer: Destination | None = None
    local: Destination | None = None
    inode: int | None = None


@dataclass(slots=True)
class _Task:
    tgid: int
    files: dict[int, _Fd]  # shared by reference between threads / CLONE_FILES tasks
    comm: str = ""
    named: bool = False    # thread_name() was asked (once per thread)


@dataclass(slots=True)
class _Stats:
    lines: int = 0
    unparsed: int = 0
    unresolved_sends: int = 0
    orphans_adopted: int = 0
    errors: int = 0                              # lines that tripped a parser bug
    first_error: tuple[str, str] | None = None   # (line, exception) of the first one


def _unquote(body: str) -> str:
    """Undo strace's C escaping; octal/hex escapes are raw bytes (usually UTF-8)."""
    if "\\" not in body:
        return body
    out, pos = bytearray(), 0
    for m in _ESC.finditer(body):
        out += body[pos:m.start()].encode("utf-8", "surrogateescape")
        esc = m[1]
        if esc[0] == "x" and len(esc) == 3:
            out.append(int(esc[1:], 16))
        elif esc[0] in "01234567":
            out.append(int(esc, 8) & 0xFF)
        else:
            out += _SIMPLE_ESC.get(esc, esc).encode("utf-8", "surrogateescape")
        pos = m.end()
    out += body[pos:].encode("utf-8", "surrogateescape")
    return out.decode("utf-8", "surrogateescape")


def _first_bytes(args: str) -> bytes | None:
    """The payload strace printed (its first STRING_LIMIT bytes; sendmsg: the first
    iov_base) as bytes."""
    m = _STR.search(args)
    return _unquote(m[1]).encode("utf-8", "surrogateescape") if m else None


def _signal_status(name: str) -> int | None:
    """Shell-style status of a process killed by strace's signal name: 128 + number."""
    m = re.fullmatch(r"SIGRT_(\d+)", name)
    if m:  # strace numbers real-time signals from the kernel's SIGRTMIN, 32
        return 128 + 32 + int(m[1])
    number = _signal.Signals.__members__.get(name)
    return 128 + int(number) if number is not None else None


def _ns(sec: str, frac: str | None) -> int:
    return int(sec) * 1_000_000_000 + int((frac or "0")[:9].ljust(9, "0"))


def _inet_end(text: str, family: str, transport: str) -> Destination | None:
    m = _INET_END.fullmatch(text)
    return Destination(family, transport, m[1], int(m[2])) if m else None


@functools.lru_cache(maxsize=4096)  # every send on a connection repeats its decoration
def parse_socket_decoration(proto: str, body: str) -> _Sock | None:
    """"TCP", "127.0.0.1:1->127.0.0.1:2" -> _Sock; None when proto is not a socket (pipe...)."""
    if proto == "socket":
        return _Sock(None, "other", int(body) if body.isdigit() else None, proto=proto)
    if proto not in _PROTOS and not proto[0].isupper():
        return None  # "pipe:[..]", "anon_inode:[..]", "net:[..]"
    family, transport = _PROTOS.get(proto, ("other", "other"))
    if body.isdigit():
        return _Sock(family, transport, int(body), proto=proto)
    if family in ("inet", "inet6"):
        local_text, _, peer_text = body.partition("->")
        return _Sock(family, transport, None, _inet_end(local_text, family, transport),
                     _inet_end(peer_text, family, transport) if peer_text else None, proto)
    if family == "unix":
        m = _UNIX_BODY.fullmatch(body)
        if not m:
            return _Sock(family, transport, proto=proto)
        local = None
        if m[4] is not None:
            local = Destination("unix", "unix", m[3] + _unquote(m[4]))
        return _Sock(family, transport, int(m[1]), local, None, proto)
    if family == "netlink":  # "ROUTE:1234" (protocol:port id) once bound
        name = body.split(":", 1)[0]
        return _Sock(family, transport, None, Destination("netlink", "other", name), None, proto)
    return _Sock(family, transport, proto=proto)


def parse_sockaddr(text: str, sock: _Sock | None) -> Destination | None:
    """The first struct sockaddr in text ({sa_family=AF_INET, ...}) as a Destination."""
    start = text.find("{sa_family=")
    if start < 0:
        return None
    text = text[start + 11:]
    transport = sock.transport if sock and sock.family else None
    if text.startswith("AF_INET6"):
        port, addr = _SIN_PORT.search(text), _SIN6_ADDR.search(text)
        if port and addr:
            return Destination("inet6", transport or "tcp", addr[1], int(port[1]))
    elif text.startswith("AF_INET"):
        port, addr = _SIN_PORT.search(text), _SIN_ADDR.search(text)
        if port and addr:
            return Destination("inet", transport or "tcp", addr[1], int(port[1]))
    elif text.startswith("AF_UNIX"):
        m = _SUN_PATH.search(text)
        if m:
            return Destination("unix", "unix", m[1] + _unquote(m[2]))
    elif text.startswith("AF_NETLINK"):
        name = sock.local.address if sock and sock.local else ""
        return Destination("netlink", "other", name)
    return None


def parse_strings(text: str) -> list[str]:
    """Quoted strings of a strace array ("[\"a\", \"b\"...]"); truncation marks dropped."""
    return [_unquote(m[1]) for m in _STR.finditer(text)]


def _result(ret: str) -> tuple[int | None, str | None]:
    """") = RET" text -> (value or -errno, fd decoration); value None for "?"/ERESTART*."""
    if ret.startswith("-1 "):
        rest = ret[3:]
        if rest.startswith("E"):
            code = getattr(_errno, rest.split(" ", 1)[0], None)
            return (-code if isinstance(code, int) else None), None
        m = _ERRNO_N.match(rest)
        # strace prints "(errno 18446744073709551613)" for garbage after a thread execve.
        return ((-int(m[1]) if m and int(m[1]) < 4096 else None), None)
    m = _RET_VALUE.match(ret)
    if not m:
        return None, None
    return int(m[1], 0), m[2]


def _clone_flags(args: str) -> int:
    m = _CLONE_FLAGS.search(args)
    if not m:
        return 0
    flags = 0
    for name in m[1].split("|"):
        if name == "CLONE_THREAD":
            flags |= _CLONE_THREAD
        elif name == "CLONE_FILES":
            flags |= _CLONE_FILES
        elif name == "CLONE_PARENT":
            flags |= _CLONE_PARENT
        elif name[:1].isdigit():
            try:
                flags |= int(name, 0)
            except ValueError:
                pass  # not a number after all; the named flags still count
    return flags


class StraceParser:
    """Feed strace lines one at a time; get Event/ProcessEvent records back.

    Per-task state: tid -> (tgid, fd table, comm). Fd tables are shared by reference
    between threads and CLONE_FILES tasks, copied on fork and unshared on exec. Lines of
    a task that appears before its parent's clone() returned (common: strace prints the
    child's first syscalls first) are held back and replayed once the clone result says
    whose child it is, so the child gets its parent's fd table and the right tgid.
    """

    def __init__(self, root_ppid: int = 0, max_orphan_lines: int = 2000,
                 max_inodes: int = 100_000, fd_lifetimes: bool = True,
                 thread_name: Callable[[int, int], str | None] | None = None) -> None:
        self.root_ppid = root_ppid  # parent of the first traced process (strace's pid)
        # Whether close/dup/fcntl are traced: only then can a bare fd number (no -yy
        # decoration) be trusted to name the socket the table remembers.
        self.fd_lifetimes = fd_lifetimes
        # (tgid, tid) -> the thread's name now, or None; asked at a thread's first event
        # when prctl(PR_SET_NAME) is not traced.
        self.thread_name = thread_name
        self.root_pid: int | None = None
        # The command's own end, from its "+++ exited with N +++" / "+++ killed by SIG +++"
        # line: strace goes on while processes the command left behind still run.
        self.root_exited = False
        self.root_status: int | None = None  # N, or 128 + signal number (None: unknown)
        self.stats = _Stats()
        self._tasks: dict[int, _Task] = {}
        self._ppid: dict[int, int] = {}
        self._pending: dict[int, tuple[int, str]] = {}
        self._orphans: dict[int, list[str]] = {}
        self._skip_exec_resume: set[int] = set()
        # Socket inode -> connect destination: joins unix sends across dup, fork,
        # SCM_RIGHTS and exec without trusting a possibly stale fd table. Bounded (LRU).
        self._peer_by_inode: OrderedDict[int, Destination] = OrderedDict()
        # (tgid, local port, destination) of inet connections that sent already: only a
        # connection's first send carries its bytes (protocol recognition)
        self._sent: set[tuple] = set()
        self._max_orphan_lines = max_orphan_lines
        self._max_inodes = max_inodes
        self._handlers: dict[str, Callable[[int, int, str, str], list[Record]]] = {
            "connect": self._connect, "bind": self._bind, "listen": self._listen,
            "close": self._close, "close_range": self._close_range,
            "dup": self._dup, "dup2": self._dup, "dup3": self._dup, "fcntl": self._fcntl,
            "fcntl64": self._fcntl, "execve": self._execve, "execveat": self._execve,
            "prctl": self._prctl, "splice": self._splice,
        }
        for name in _SENDS - {"splice"}:
            self._handlers[name] = self._send
        for name in _CLONES:
            self._handlers[name] = self._clone

    # -- input ------------------------------------------------------------------------
    def feed(self, line: str) -> list[Record]:
        """Parse one line of strace output (with or without its newline)."""
        line = line.rstrip("\n")
        if not line:
            return []
        self.stats.lines += 1
        try:
            return self._feed(line)
        except Exception as exc:  # one odd line must not end tracing: count it
            self.stats.errors += 1
            if self.stats.first_error is None:
                self.stats.first_error = (line[:300], f"{type(exc).__name__}: {exc}")
            return []

    def live_processes(self) -> dict[int, str]:
        """Processes seen starting and not (yet) seen exiting: pid -> comm."""
        live = {task.tgid: task.comm for task in self._tasks.values()}
        for pid in self._orphans:
            live.setdefault(pid, "")
        return live

    def finish(self) -> list[Record]:
        """End of output: adopt tasks whose parent never showed up; drop unfinished calls."""
        out: list[Record] = []
        while self._orphans:
            out += self._adopt(next(iter(self._orphans)), 0, None)
        self._pending.clear()
        return out

    def _feed(self, line: str) -> list[Record]:
        m = _LINE.fullmatch(line)
        if not m:
            self.stats.unparsed += 1
            return []
        tid, ts, rest = int(m[1]), _ns(m[2], m[3]), m[4]
        out: list[Record] = []
        if tid not in self._tasks:
            if self.root_pid is None:  # strace's own child: the traced command
                self.root_pid = tid
                self._tasks[tid] = _Task(tid, {})
                self._ppid[tid] = self.root_ppid
                if self.root_ppid:
                    out.append(ProcessEvent("fork", None, ts, tid, self.root_ppid))
            else:
                held = self._orphans.setdefault(tid, [])
                held.append(line)
                if len(held) > self._max_orphan_lines:
                    return self._adopt(tid, 0, None)
                return []
        return out + self._dispatch(tid, ts, rest)

    def _adopt(self, tid: int, ppid: int, parent: _Task | None, flags: int = 0,
               ts: int | None = None, creator: int = 0) -> list[Record]:
        """Register a new task (from a clone result, or parentless) and replay its lines."""
        out: list[Record] = []
        if parent is None:
            self.stats.orphans_adopted += 1
            self._tasks[tid] = _Task(tid, {})
            self._ppid[tid] = ppid
        elif flags & _CLONE_THREAD:
            self._tasks[tid] = _Task(parent.tgid, parent.files, parent.comm)
            # Attribution needs the thread's birth (a thread can outlive its test);
            # a reused tid is announced again by its new clone.
            out.append(ProcessEvent("thread", None, ts, parent.tgid, creator, parent.comm,
                                    tid=tid))
        else:
            files = parent.files if flags & _CLONE_FILES else dict(parent.files)
            self._tasks[tid] = _Task(tid, files, parent.comm)
            self._ppid[tid] = ppid
            out.append(ProcessEvent("fork", None, ts, tid, ppid, parent.comm))
        for held in self._orphans.pop(tid, ()):
            out += self._feed(held)
        return out

    def _dispatch(self, tid: int, ts: int, rest: str) -> list[Record]:
        if rest.startswith("+++ "):
            return self._exit_message(tid, ts, rest)
        if rest.startswith("--- "):
            return []  # signal delivery
        if rest.startswith("<... "):
            m = _RESUMED.match(rest)
            if not m:
                self.stats.unparsed += 1
                return []
            name, tail = m[1], m[2]
            if name in ("execve", "execveat") and tid in self._skip_exec_resume:
                self._skip_exec_resume.discard(tid)
                self._pending.pop(tid, None)
                return []
            pending = self._pending.pop(tid, None)
            if pending and pending[1].startswith(name + "("):
                ts, rest = pending[0], pending[1] + tail  # time of entry: when it was tried
            else:
                rest = name + "(" + tail
            rest = rest.replace(_UNFINISHED, "")
        elif rest.endswith(_UNFINISHED):
            self._pending[tid] = (ts, rest[:-len(_UNFINISHED)])
            return []
        elif rest.endswith("...>"):
            m = _PID_CHANGED.fullmatch(rest)
            if m:
                return self._thread_exec(tid, ts, m[1], int(m[2]))
        return self._complete(tid, ts, rest)

    def _complete(self, tid: int, ts: int, text: str) -> list[Record]:
        i = text.rfind(") = ")
        p = text.find("(")
        if i < 0 or p < 0 or p > i:
            self.stats.unparsed += 1
            return []
        handler = self._handlers.get(text[:p])
        return handler(tid, ts, text[p + 1:i], text[i + 4:]) if handler else []

    # -- process lifecycle -----------------------------------------------------------
    def _exit_message(self, tid: int, ts: int, rest: str) -> list[Record]:
        m = _EXIT_MSG.fullmatch(rest)
        if not m:
            self.stats.unparsed += 1
            return []
        if m[3]:  # "superseded by execve in pid T": the leader lives on as T's program
            return []
        if tid == self.root_pid and not self.root_exited:
            self.root_exited = True
            self.root_status = int(m[1]) if m[1] is not None else _signal_status(m[2])
        self._pending.pop(tid, None)
        task = self._tasks.pop(tid, None)
        if task is None or task.tgid != tid:
            return []  # a thread ended; the process goes on
        ppid = self._ppid.pop(tid, 0)
        for other in [t for t, k in self._tasks.items() if k.tgid == tid]:
            del self._tasks[other]
        return [ProcessEvent("exit", None, ts, tid, ppid, task.comm)]

    def _clone(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        child, _ = _result(ret)
        parent = self._tasks.get(tid)
        if child is None or child <= 0 or parent is None:
            return []
        flags = _clone_flags(args)
        ppid = parent.tgid
        if flags & _CLONE_PARENT:
            ppid = self._ppid.get(parent.tgid, 0)
        return self._adopt(child, ppid, parent, flags, ts, tid)

    def _execve(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        value, _ = _result(ret)
        if value != 0:
            return []
        return self._exec_done(tid, ts, args)

    def _thread_exec(self, tid: int, ts: int, text: str, leader: int) -> list[Record]:
        """A non-leader thread exec'd: the kernel gives it the leader's pid (strace prints
        "<pid changed to N ...>", then "+++ superseded ..." and a bogus resumed result)."""
        old = self._tasks.pop(tid, None)
        task = self._tasks.get(leader)
        if task is None:
            task = self._tasks[leader] = _Task(leader, old.files if old else {})
        self._pending.pop(leader, None)
        self._skip_exec_resume.add(leader)
        p = text.find("(")
        return self._exec_done(leader, ts, text[p + 1:])

    def _exec_done(self, tid: int, ts: int, args: str) -> list[Record]:
        task = self._tasks[tid]
        for other in [t for t, k in self._tasks.items() if k.tgid == task.tgid and t != tid]:
            del self._tasks[other]  # exec ends every other thread of the process
        task.files = dict(task.files)  # exec unshares a CLONE_FILES table
        strings = parse_strings(args)  # execve("path", [argv]..), execveat(dirfd, "path", ..)
        path = strings[0] if strings else ""
        argv = tuple(strings[1:])
        task.comm = path.rsplit("/", 1)[-1][:_TASK_COMM_LEN] or (argv[0] if argv else "")
        return [ProcessEvent("exec", None, ts, task.tgid, self._ppid.get(task.tgid, 0),
                             task.comm, argv)]

    def _prctl(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        # pthread_setname_np on the calling thread is prctl(PR_SET_NAME): librdkafka's
        # "rdk:broker-1" names arrive this way.
        if args.startswith("PR_SET_NAME, ") and _result(ret)[0] == 0 and tid in self._tasks:
            names = parse_strings(args)
            if names:
                self._tasks[tid].comm = names[0][:_TASK_COMM_LEN]
        return []

    # -- fd table --------------------------------------------------------------------
    def _fd_arg(self, args: str) -> tuple[int | None, _Sock | None, bool]:
        """(fd, socket decoration, decorated?) of the first argument."""
        m = _FD_ARG.match(args)
        if not m:
            return None, None, False
        fd = int(m[1])
        if m[2] is not None:
            return fd, parse_socket_decoration(m[2], m[3]), True
        return fd, None, m[4] is not None

    def _remember(self, inode: int | None, peer: Destination) -> None:
        if inode is None:
            return
        self._peer_by_inode[inode] = peer
        self._peer_by_inode.move_to_end(inode)
        if len(self._peer_by_inode) > self._max_inodes:
            self._peer_by_inode.popitem(last=False)

    def _close(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        fd, _, _ = self._fd_arg(args)
        task = self._tasks.get(tid)
        # Linux releases the fd even when close() fails with EINTR/EIO; only EBADF keeps it.
        if task is not None and fd is not None and _result(ret)[0] != -_errno.EBADF:
            task.files.pop(fd, None)
        return []

    def _close_range(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        task = self._tasks.get(tid)
        parts = args.split(", ")
        if task is None or len(parts) < 3 or _result(ret)[0] != 0 or "CLOEXEC" in parts[2]:
            return []
        if "UNSHARE" in parts[2]:
            task.files = dict(task.files)
        first = int(parts[0]) if parts[0].isdigit() else 0
        last = int(parts[1]) if parts[1].isdigit() else 1 << 32  # "~0U"
        for fd in [fd for fd in task.files if first <= fd <= last]:
            del task.files[fd]
        return []

    def _dup(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        task = self._tasks.get(tid)
        old, _, _ = self._fd_arg(args)
        new, _ = _result(ret)
        if task is None or old is None or new is None or new < 0:
            return []
        entry = task.files.get(old)
        if entry is None:
            task.files.pop(new, None)
        else:
            task.files[new] = entry
        return []

    def _fcntl(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        if ", F_DUPFD" not in args:  # F_DUPFD and F_DUPFD_CLOEXEC return a new fd
            return []
        return self._dup(tid, ts, args, ret)

    # -- socket events ---------------------------------------------------------------
    def _event(self, kind: str, tid: int, ts: int, dest: Destination, result: int,
               local_port: int | None = None) -> Event:
        task = self._tasks[tid]
        if not task.named and task.tgid != tid and self.thread_name is not None:
            task.named = True
            task.comm = self.thread_name(task.tgid, tid) or task.comm
        return Event(kind, None, ts, task.tgid, tid, task.comm, dest, result, local_port)

    def _connect(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        value, _ = _result(ret)
        task = self._tasks.get(tid)
        fd, sock, _ = self._fd_arg(args)
        if value is None or task is None or fd is None:
            return []
        dest = parse_sockaddr(args, sock)
        if dest is None:
            if "AF_UNSPEC" in args:  # dissolves a UDP association
                task.files.pop(fd, None)
            return []
        if value in _CONNECTING:
            inode = sock.inode if sock else None
            old = task.files.get(fd)
            local = old.local if old and (old.inode is None or old.inode == inode) else None
            task.files[fd] = _Fd(dest, local, inode)
            self._remember(inode, dest)
        return [self._event("connect", tid, ts, dest, value)]

    def _bind(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        value, _ = _result(ret)
        task = self._tasks.get(tid)
        fd, sock, _ = self._fd_arg(args)
        if value != 0 or task is None or fd is None:
            return []
        local = parse_sockaddr(args, sock)
        if local is None:
            return []
        task.files[fd] = _Fd(None, local, sock.inode if sock else None)
        # A UDP socket bound to a fixed port is a server (a fake statsd in a fixture).
        if local.transport == "udp" and local.port:
            return [self._event("listen", tid, ts, local, 0, local.port)]
        return []

    def _listen(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        value, _ = _result(ret)
        task = self._tasks.get(tid)
        fd, sock, _ = self._fd_arg(args)
        if value != 0 or task is None or fd is None:
            return []
        local = sock.local if sock else None
        entry = task.files.get(fd) if self.fd_lifetimes else None
        if local is None and entry is not None:
            local = entry.local
        if local is None:
            return []
        return [self._event("listen", tid, ts, local, 0, local.port)]

    def _splice(self, tid: int, ts: int, args: str, ret: str) -> list[Record]:
        # splice(fd_in, off_in, fd_out, off_out, len, flags): the socket is fd_out. Split
        # after the in-side's "]>, " or ">, " so a decoration's own ", " cannot mislead.
        m = _FD_ARG.match(args)
        if not m:
            return []
        rest = args[m.end() + 2:]
        off = rest.split(", ", 1)
        return self._send(tid, ts, args, ret, off[1] if len(off) == 2 else "")

    def _send(self, tid: int, ts: int, args: str, ret: str,
              fd_args: str | None = None) -> list[Record]:
        task = self._tasks.get(tid)
        if task is None:
            return []
        fd, sock, decorated = self._fd_arg(args if fd_args is None else fd_args)
        if fd is None or (decorated and sock is None):
            return []  # a file, pipe, tty...
        entry = task.files.get(fd) if self.fd_lifetimes else None
        if not decorated and entry is None:
            return []  # no -yy and not a socket we saw connect/bind
        value, _ = _result(ret)
        if value is None:
            return []
        dest, local_port = self._send_dest(args, sock, entry)
        if dest is None:
            if sock is None or sock.family not in ("unix",):
                self.stats.unresolved_sends += 1
            return []
        event = self._event("send", tid, ts, dest, value, local_port)
        # (an unconnected datagram socket may show no local port: its first datagram to
        # each destination counts)
        if value > 0 and dest.family in ("inet", "inet6") \
                and (local_port or dest.transport == "udp"):
            key = (event.pid, local_port, dest)
            if key not in self._sent:
                if len(self._sent) >= 65536:
                    self._sent.clear()  # bounded: at worst a later send is taken as first
                self._sent.add(key)
                first = _first_bytes(args)
                if first:
                    event = replace(event, first_bytes=first)
        return [event]

    def _send_dest(self, args: str, sock: _Sock | None,
                   entry: _Fd | None) -> tuple[Destination | None, int | None]:
        local = sock.local if sock and sock.local else (entry.local if entry else None)
        local_port = local.port if local else None
        # An explicit address wins: unconnected UDP (statsd), unix datagrams (/dev/log).
        if "msg_name=" in args:  # sendmsg/sendmmsg: msg_name precedes the payload
            i = args.find("msg_name={")
        elif args.endswith(", NULL, 0"):  # sendto without an address
            i = -1
        else:  # sendto: the address follows the payload, so take the last one
            i = args.rfind(", {sa_family=")
        if i >= 0:
            dest = parse_sockaddr(args[i:], sock)
            if dest is not None:
                return dest, local_port
        if sock is not None and sock.peer is not None:
            return sock.peer, local_port
        inode = sock.inode if sock else None
        if entry is not None and entry.peer is not None and (
                inode is None or entry.inode is None or entry.inode == inode):
            return entry.peer, local_port
        if inode is not None and inode in self._peer_by_inode:
            return self._peer_by_inode[inode], local_port
        if sock is not None and sock.family == "netlink":
            return Destination("netlink", "other", local.address if local else ""), None
        # Left: unix sockets from socketpair() or accepted server-side (their -yy path is
        # the socket's own name, not a destination): not contacts of a service.
        return None, None
