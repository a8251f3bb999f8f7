"""In-process backend: patches Python's socket layer and resolves peers with getpeername().

Usable without root and without pytest: `install(sink)` / `uninstall()` are plain functions
(pytest-socket style). The real methods are captured at import. A wrapper never changes the
socket's behaviour and never raises into user code: tracing errors are swallowed and counted.
"""
from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import ssl
import sys
import threading
import time
import weakref
from typing import Callable

from svctrace.capture.base import Backend
from svctrace.events import Destination, Event, Lookup, ProcessEvent, Stack

BLIND_SPOTS = (
    "C-extension sockets (libpq via psycopg2/psycopg, librdkafka via confluent-kafka, "
    "grpc core): they never call Python's socket methods",
    "subprocesses that are not Python processes running this plugin",
    "host names resolved outside Python's socket.getaddrinfo (libpq, librdkafka, DNS "
    "libraries): their destinations are named by address",
    "TLS handshakes (OpenSSL sends the ClientHello itself): a TLS connection's protocol "
    "and host are recognised from the plaintext it sends (an HTTP request's Host), not SNI",
)

_REAL = {name: getattr(socket.socket, name) for name in
         ("connect", "connect_ex", "send", "sendall", "sendto", "sendmsg", "listen")}
_REAL_SSL = {name: ssl.SSLSocket.__dict__[name] for name in ("send", "sendall")}
_REAL_THREAD_START = threading.Thread.start
_REAL_GETADDRINFO = socket.getaddrinfo
_state: dict = {"sink": None, "errors": 0, "stacks": None, "stacked": set()}
_MAX_FRAMES = 40
_peers: "weakref.WeakKeyDictionary[socket.socket, tuple]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()
# Destinations each socket has sent to: only a first send carries its bytes. A TLS socket's
# are its plaintext (the handshake happens inside OpenSSL): an HTTP request's Host names it.
_sent: "weakref.WeakKeyDictionary[socket.socket, set]" = weakref.WeakKeyDictionary()
FIRST_BYTES = 256  # as the eBPF backend keeps (bpf/svctrace.h SVCT_DATA_LEN)


def _transport(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return "unix"
    kind = sock.type & 0xF  # strip SOCK_NONBLOCK/SOCK_CLOEXEC flags
    return {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}.get(kind, "other")


def _destination(sock: socket.socket, address) -> Destination | None:
    family = sock.family
    if family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple):
        name = "inet" if family == socket.AF_INET else "inet6"
        return Destination(name, _transport(sock), str(address[0]), int(address[1]))
    if family == socket.AF_UNIX:
        if isinstance(address, bytes):
            address = address.decode("utf-8", "replace")
        if isinstance(address, str):
            path = "@" + address[1:] if address.startswith("\0") else address
            return Destination("unix", "unix", path)
        return None
    return Destination("other", "other", str(address)) if address else None


def _peer(sock: socket.socket) -> tuple:
    """(Destination | None, local port) of a connected socket, cached per socket object:
    a pooled connection is resolved once, yet counted on every send."""
    cached = _peers.get(sock)
    if cached is not None:
        return cached
    try:
        dest = _destination(sock, sock.getpeername())
    except OSError:
        return None, None  # not connected (yet): nothing to cache
    local = None
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            local = sock.getsockname()[1]
        except OSError:
            pass
    _peers[sock] = (dest, local)
    return dest, local


def _first(sock: socket.socket, dest: Destination | None, data) -> bytes | None:
    """The first FIRST_BYTES of data when it is sock's first send to dest (an inet
    destination), for protocol recognition; else None."""
    if dest is None or dest.family not in ("inet", "inet6"):
        return None
    sent = _sent.get(sock)
    if sent is None:
        try:
            sent = _sent[sock] = set()
        except TypeError:
            return None
    if dest in sent or len(sent) >= 64:
        return None
    sent.add(dest)
    try:
        return bytes(memoryview(data).cast("B")[:FIRST_BYTES])
    except (TypeError, ValueError):
        return None


def _emit(kind: str, dest: Destination | None, result: int, local: int | None,
          started: int, first: bytes | None = None) -> None:
    sink = _state["sink"]
    if sink is None or dest is None:
        return
    tid = threading.get_native_id()
    sink(Event(kind, started, time.time_ns(), os.getpid(), tid,
               threading.current_thread().name, dest, result, local, first_bytes=first))
    stack_sink = _state["stacks"]
    if stack_sink is not None and (tid, dest) not in _state["stacked"]:
        # --stacks: taken inside the call itself, so exact; once per thread and
        # destination between two phase edges (new_epoch), as the eBPF backend freezes.
        _state["stacked"].add((tid, dest))
        stack_sink(Stack(started, os.getpid(), tid, kind, threads=_python_stacks(tid),
                         how="in-call"))


def _python_stacks(tid: int) -> tuple:
    """The Python stacks of the calling thread (without svctrace's own frames) and of the
    main thread, innermost frame first, in py-spy's shape (svctrace.join.stacks)."""
    native = {t.ident: (t.native_id, t.name) for t in threading.enumerate()}
    main = threading.main_thread()
    out = []
    for ident, frame in sys._current_frames().items():
        native_id, name = native.get(ident, (None, ""))
        if native_id != tid and ident != main.ident:
            continue
        frames = []
        while frame is not None and len(frames) < _MAX_FRAMES:
            code = frame.f_code
            if code.co_filename != __file__:  # our wrappers are not the user's call site
                frames.append({"file": _relative(code.co_filename), "line": frame.f_lineno,
                               "function": code.co_name})
            frame = frame.f_back
        out.append({"tid": native_id or 0, "name": name, "frames": frames})
    return tuple(out)


def _relative(path: str) -> str:
    cwd = os.getcwd()
    return path[len(cwd) + 1:] if path.startswith(cwd + os.sep) else path


def new_epoch() -> None:
    """A phase edge: the next contact of each thread and destination gets a stack again."""
    _state["stacked"].clear()


def _guard(fn: Callable) -> None:
    try:
        fn()
    except Exception:  # tracing must never break the user's socket call
        _state["errors"] += 1


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, OSError) and exc.errno:
        return -exc.errno
    return -errno.EIO


def _connect(self, address):
    started = time.monotonic_ns()
    _peers.pop(self, None)
    try:
        result = _REAL["connect"](self, address)
    except BaseException as exc:
        code = _errno_of(exc)
        _guard(lambda: _emit("connect", _destination(self, address), code, None, started))
        raise
    _guard(lambda: _emit("connect", _peer(self)[0] or _destination(self, address), 0, None,
                         started))
    return result


def _connect_ex(self, address):
    started = time.monotonic_ns()
    _peers.pop(self, None)
    code = _REAL["connect_ex"](self, address)
    _guard(lambda: _emit("connect", _destination(self, address), -code if code else 0, None,
                         started))
    return code


def _nbytes(args: tuple) -> int:
    try:
        return memoryview(args[0]).nbytes
    except (IndexError, TypeError):
        return 0


def _sender(name: str, real: Callable):
    def send(self, *args, **kwargs):
        started = time.monotonic_ns()
        try:
            result = real(self, *args, **kwargs)
        except BaseException as exc:
            code = _errno_of(exc)
            _guard(lambda: _emit("send", _peer(self)[0], code, _peer(self)[1], started))
            raise
        # sendall returns None on success: it sent everything it was given.
        _guard(lambda: _emit("send", _peer(self)[0],
                             result if isinstance(result, int) else _nbytes(args),
                             _peer(self)[1], started,
                             _first(self, _peer(self)[0], args[0]) if args else None))
        return result
    send.__name__ = name
    return send


def _sendto(self, data, *args):
    started = time.monotonic_ns()
    result = _REAL["sendto"](self, data, *args)
    address = args[-1] if args else None
    _guard(lambda: _emit("send", _destination(self, address), result, _peer(self)[1], started,
                         _first(self, _destination(self, address), data)))
    return result


def _sendmsg(self, buffers, ancdata=(), flags=0, address=None):
    started = time.monotonic_ns()
    if address is None:
        result = _REAL["sendmsg"](self, buffers, ancdata, flags)
    else:
        result = _REAL["sendmsg"](self, buffers, ancdata, flags, address)
    dest = _destination(self, address) if address is not None else _peer(self)[0]
    _guard(lambda: _emit("send", dest, result, _peer(self)[1], started,
                         _first(self, dest, buffers[0])
                         if isinstance(buffers, (list, tuple)) and buffers else None))
    return result


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%", 1)[0])
        return True
    except ValueError:
        return False


def _getaddrinfo(host, *args, **kwargs):
    """socket.getaddrinfo, reporting the name and the addresses it gave (names by host)."""
    result = _REAL_GETADDRINFO(host, *args, **kwargs)
    sink = _state["sink"]
    if sink is not None and isinstance(host, (str, bytes)) and host:
        try:
            name = host.decode("idna") if isinstance(host, bytes) else host
            if _is_address(name):
                return result  # an address given as such: no name was used
            addresses = tuple(dict.fromkeys(str(entry[4][0]).split("%", 1)[0]
                                            for entry in result
                                            if entry[0] in (socket.AF_INET, socket.AF_INET6)))
            sink(Lookup("nss", time.monotonic_ns(), time.time_ns(), os.getpid(),
                        threading.get_native_id(), name=name, addresses=addresses))
        except Exception:  # never into user code
            _state["errors"] += 1
    return result


def _listen(self, *args):
    result = _REAL["listen"](self, *args)

    def note():
        name = self.getsockname()
        if isinstance(name, tuple):
            _emit("listen", _destination(self, name), 0, name[1], time.monotonic_ns())
    _guard(note)
    return result


def _after_fork_in_child() -> None:
    # A forked child keeps the patch; say who its parent is so its traffic is attributed
    # to the parent's test.
    _guard(lambda: _state["sink"] and _state["sink"](ProcessEvent(
        "fork", time.monotonic_ns(), time.time_ns(), os.getpid(), os.getppid())))


os.register_at_fork(after_in_child=_after_fork_in_child)


def _thread_start(self):
    # Announce the thread as the kernel backends do (birth time = the start call), so a
    # thread that outlives its test is judged alike under every backend.
    # Thread.start returns once the thread runs, when its native_id is set.
    born_mono, born_wall = time.monotonic_ns(), time.time_ns()
    creator = threading.get_native_id()
    result = _REAL_THREAD_START(self)
    _guard(lambda: _state["sink"] and self.native_id is not None and _state["sink"](
        ProcessEvent("thread", born_mono, born_wall, os.getpid(), creator, self.name,
                     tid=self.native_id)))
    return result


# C clients that talk to their service with their own sockets, never Python's: loaded in a
# process, they make the in-process answer incomplete. Matched on the file names that
# /proc/self/maps shows (wheels bundle them as <package>.libs/libpq-<hash>.so.5).
_UNSEEN = tuple((name, re.compile(rf"/{lib}(?:-[^/]*)?\.so")) for name, lib in (
    ("libpq", "libpq"), ("librdkafka", "librdkafka"), ("grpc core", r"cygrpc\.[^/]*"),
    ("libmysqlclient", "lib(?:mysqlclient|mariadb)"), ("libmemcached", "libmemcached"),
    ("unixODBC", "libodbc"), ("Oracle client", "libclntsh")))
_unseen_state: dict = {"modules": -1, "found": ()}


def unseen_clients(maps: str) -> tuple[str, ...]:
    """The C client libraries a /proc/PID/maps text shows, with the Python package that
    bundles each where its path says so: ("libpq (psycopg2)", "librdkafka (confluent_kafka)")."""
    found: dict[str, None] = {}
    for line in maps.splitlines():
        path = line.rsplit(" ", 1)[-1]
        if not path.startswith("/") or ".so" not in path:
            continue
        for name, pattern in _UNSEEN:
            if pattern.search(path):
                folder = path.rsplit("/", 2)[-2]
                if folder.endswith(".libs"):  # auditwheel's bundle: <package>.libs
                    folder = folder[:-len(".libs")].removesuffix("_binary")
                    name = f"{name} ({folder})"
                found[name] = None
    return tuple(sorted(found))


def loaded_unseen_clients() -> tuple[str, ...]:
    """unseen_clients of this process. Cheap to call at every test's end: maps are read
    again only when an import added modules since the last call (how these get loaded)."""
    modules = len(sys.modules)
    if modules != _unseen_state["modules"]:
        _unseen_state["modules"] = modules
        try:
            with open("/proc/self/maps") as fh:
                _unseen_state["found"] = unseen_clients(fh.read())
        except OSError:  # no procfs: say nothing rather than guess
            pass
    return _unseen_state["found"]


def install(sink: Callable, stack_sink: Callable | None = None) -> None:
    """Start reporting socket operations of this process to sink(Event); with stack_sink,
    also the Python stacks of each first contact (svctrace run --stacks)."""
    with _lock:
        _state["sink"] = sink
        _state["stacks"] = stack_sink
        _state["stacked"] = set()
        socket.socket.connect = _connect
        socket.socket.connect_ex = _connect_ex
        socket.socket.send = _sender("send", _REAL["send"])
        socket.socket.sendall = _sender("sendall", _REAL["sendall"])
        socket.socket.sendto = _sendto
        socket.socket.sendmsg = _sendmsg
        socket.socket.listen = _listen
        # SSLSocket overrides send/sendall and writes through the TLS object, not socket.send.
        ssl.SSLSocket.send = _sender("send", _REAL_SSL["send"])
        ssl.SSLSocket.sendall = _sender("sendall", _REAL_SSL["sendall"])
        threading.Thread.start = _thread_start
        socket.getaddrinfo = _getaddrinfo


def uninstall() -> None:
    """Restore the real socket methods."""
    with _lock:
        _state["sink"] = None
        _state["stacks"] = None
        for name in _REAL:
            # The real ones are inherited from _socket.socket: deleting our override
            # restores exactly the original lookup.
            if name in socket.socket.__dict__:
                delattr(socket.socket, name)
        for name, real in _REAL_SSL.items():
            setattr(ssl.SSLSocket, name, real)
        threading.Thread.start = _REAL_THREAD_START
        socket.getaddrinfo = _REAL_GETADDRINFO


def installed() -> bool:
    return _state["sink"] is not None


class InprocessBackend(Backend):
    """Runner side of the in-process backend: the plugin inside pytest does the tracing and
    sends its events through the marker pipe, so there is nothing to start here."""

    name = "inprocess"
    clock = "mono"
    blind_spots = BLIND_SPOTS

    def stats(self) -> dict:
        return {"lost_events": 0}
