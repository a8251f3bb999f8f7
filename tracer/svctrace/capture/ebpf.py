"""eBPF backend: bcc tracepoint programs report the command tree's connects, sends and forks."""
from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import functools
import importlib.resources
import ipaddress
import os
import platform
import re
import struct
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from svctrace.kernel import boot_cache, bpf_image, bpf_program, btf, btf_cache, pidns
from svctrace.kernel import tracefs as tracefs_
from svctrace.capture.base import Backend, BackendFailed, BackendUnavailable, RunContext
from svctrace.kernel.bcc_import import load_bcc
from svctrace.kernel.bpf_image import LoadedProgram
from svctrace.events import Destination, Event, Freeze, Lookup, Lost, ProcessEvent

# Mirrors of bpf/svctrace.h, checked field by field by tests/test_kernel_contract.py:
# struct svct_event (fixed width, no implicit padding, 160 bytes), enum svct_kind,
# enum svct_proto and enum svct_counter.
_EVENT = struct.Struct("<QIIIi16sHHBBBB108sI")
# struct svct_first: a socket's first send (svct_event), data_len, pad, data[SVCT_DATA_LEN].
_FIRST = struct.Struct(f"<{_EVENT.size}sII256s")
_FIRST_SIZE = _FIRST.size
_KINDS = {1: "connect", 2: "send", 3: "listen", 4: "fork", 5: "exit", 6: "exec",
          7: "connect_result", 8: "thread", 9: "freeze", 10: "dns_reply", 11: "nss_result"}
# struct svct_dns: a struct svct_event head, len, stream, padding, SVCT_DNS_MAX bytes.
_DNS = struct.Struct(f"<{_EVENT.size}sHB5x512s")
# struct svct_nss: head, naddr, padding, family[8], addr[8][16], name[256].
_NSS = struct.Struct(f"<{_EVENT.size}sB7x8s128s256s")
# struct svct_loss_key (pid, pad, marker epoch) and struct svct_loss (first_ts, last_ts, n):
# the map `losses`, drained at every poll
_LOSS_KEY = struct.Struct("<IIQ")
_LOSS = struct.Struct("<QQQ")
# The uprobe programs of svctrace.bpf.c (PROG_TYPE_KPROBE: uprobes are kprobe-type
# programs; attached by child_started to the libc the command maps)
_PROG_TYPE_KPROBE = 2
_UPROBES = {"uprobe_gai_enter": ("getaddrinfo", False), "uretprobe_gai_return": ("getaddrinfo", True)}
# Byte offsets in struct pt_regs of the first and fourth argument and the return value
# (uapi: arch/x86/include/uapi/asm/ptrace.h di/cx/ax; arm64 user_pt_regs regs[0]/[3]/[0])
_PT_REGS = {"x86_64": (112, 88, 80), "aarch64": (0, 24, 0)}
_LIBC = re.compile(r"\s(/\S*/libc(?:\.so\.6|-[0-9.]+\.so|\.musl-\w+\.so\.1))$")
_PROCESS_KINDS = {"fork", "exit", "exec", "thread"}
_FAMILIES = {1: "unix", 2: "inet", 10: "inet6", 16: "netlink"}
_PROTOS = {1: "tcp", 2: "udp", 3: "unix"}  # 0 unknown, 4 other -> "other"
# A SEND tail's ppid (kernel_join): how many of its sends were another socket's first
# with the bytes of this destination's first send (fold_dest)
_SEND_FIRSTS = struct.Struct("<I")
_SEND_FIRSTS_AT = 16  # offset of ppid in struct svct_event
_FIRST_BYTES_KEPT = 4096
# counters[] slots (CNT_<NAME>), reported by stats() under these names
_COUNTERS = {"lost_events": 0, "sends_unknown_dest": 1, "untraced_children": 2,
             "foreign_pidns_events": 3, "folded_sends": 4, "tailed_sends": 5,
             "folded_connects": 6, "tailed_connects": 7}

# struct sock_common members read by the program: -D name -> member (verified via BTF).
SOCK_COMMON_DEFINES = {
    "OFF_SKC_DADDR": "skc_daddr",
    "OFF_SKC_DPORT": "skc_dport",
    "OFF_SKC_NUM": "skc_num",
    "OFF_SKC_V6_DADDR": "skc_v6_daddr",
}
# The struct members the program reads besides sock_common's (-D name -> (struct,
# member)): a unix send's peer path, and the fd-table walk that tells a socket's type.
KERNEL_DEFINES = {
    "OFF_SK_ERR": ("sock", "sk_err"),  # moves between kernel versions: from BTF
    "OFF_UNIX_PEER": ("unix_sock", "peer"),
    "OFF_UNIX_ADDR": ("unix_sock", "addr"),
    "OFF_UNIX_ADDR_LEN": ("unix_address", "len"),
    "OFF_UNIX_ADDR_NAME": ("unix_address", "name"),
    "OFF_TASK_FILES": ("task_struct", "files"),
    "OFF_FILES_FDT": ("files_struct", "fdt"),
    "OFF_FDT_FD": ("fdtable", "fd"),
    "OFF_FILE_PRIVATE": ("file", "private_data"),
    "OFF_SOCKET_TYPE": ("socket", "type"),
    # SVCT_JOIN: which file a write goes to (the marker pipe, by inode number and device)
    "OFF_FILE_INODE": ("file", "f_inode"),
    "OFF_INODE_INO": ("inode", "i_ino"),
    "OFF_INODE_SB": ("inode", "i_sb"),
    "OFF_SB_DEV": ("super_block", "s_dev"),
}
# First bytes of a socket's first send (SVCT_FIRST_BYTES): the send syscall's arguments
# are read from the user registers saved at syscall entry, whose layout and syscall
# numbers are the architecture's own. Per machine: -D name -> pt_regs member (BTF), and
# the syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl). Elsewhere: a blind spot.
FIRST_BYTES_REGS = {"x86_64": {"OFF_REGS_NR": "orig_ax", "OFF_REGS_ARG2": "si",
                               "OFF_REGS_ARG3": "dx"}}
FIRST_BYTES_SYSCALLS = {"x86_64": {"SVCT_NR_WRITE": 1, "SVCT_NR_WRITEV": 20,
                                   "SVCT_NR_SENDTO": 44, "SVCT_NR_SENDMSG": 46,
                                   "SVCT_NR_SENDMMSG": 307}}
KERNEL_DEFINES.update({define: ("pt_regs", member) for define, member in
                       FIRST_BYTES_REGS.get(platform.machine(), {}).items()})
_PROBE = re.compile(rb"^TRACEPOINT_PROBE\((\w+), (\w+)\)", re.M)


def _program_source() -> bytes:
    return (importlib.resources.files("svctrace.bpf") / "svctrace.bpf.c").read_bytes()


@lru_cache(maxsize=1)
def tracepoints() -> tuple[str, ...]:
    """Every tracepoint the program attaches to ("syscalls/sys_enter_connect", ...), read
    from the program itself so the availability check cannot drift from it."""
    return tuple(f"{cat.decode()}/{name.decode()}" for cat, name in
                 _PROBE.findall(_program_source()))


JOIN_KERNEL = (5, 12)  # SVCT_JOIN: BPF atomic fetch-and-add (BPF_FETCH)


def _kernel_version() -> tuple[int, int]:
    try:
        major, minor = os.uname().release.split("-")[0].split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


IMAGE_PREFIX = "program-"  # compiled programs kept in boot_cache.DIR: program-<key>.json
DEFAULT_RINGBUF_PAGES = 256  # 1 MiB with 4 KiB pages: held 200k events/s, no loss (measured)
_CAP_SYS_ADMIN, _CAP_PERFMON, _CAP_BPF = 21, 38, 39


def _effective_caps() -> int:
    # Read raw: psutil does not tell capabilities.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def sock_common_offsets() -> dict[str, int]:
    """{-D name: byte offset} of every kernel struct member the program reads (BtfError)."""
    return dict(_offsets())


@lru_cache(maxsize=1)
def _offsets() -> dict[str, int]:
    # Parsing vmlinux BTF costs ~0.1 s, and the availability check, the explicit backend
    # check and the compile each asked: once per process, and once per boot (btf_cache).
    cached = btf_cache.load({*SOCK_COMMON_DEFINES, *KERNEL_DEFINES})
    if cached is not None:
        return cached
    offsets = {define: btf.member_offset("sock_common", member)
               for define, member in SOCK_COMMON_DEFINES.items()}
    offsets.update({define: btf.member_offset(struct, member)
                    for define, (struct, member) in KERNEL_DEFINES.items()})
    btf_cache.store(offsets)
    return offsets


def _check_privileges() -> str | None:
    caps = _effective_caps()
    has = (caps >> _CAP_SYS_ADMIN) & 1 or ((caps >> _CAP_BPF) & 1 and (caps >> _CAP_PERFMON) & 1)
    if os.geteuid() != 0 or not has:
        return ("needs root (with CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN, to load programs "
                "and read tracefs): run svctrace with sudo")
    return None


def _check_bcc() -> str | None:
    try:
        load_bcc()  # loads libbcc; compiles nothing
    except Exception as exc:  # ImportError, or OSError from a missing libbcc.so
        return (f"bcc is not importable ({exc}): install the distribution's package "
                "(Debian/Ubuntu: apt-get install python3-bpfcc; Fedora: dnf install "
                "python3-bcc), or run scripts/setup.sh")
    return None


def _check_headers() -> str | None:
    release = os.uname().release
    build = Path(f"/lib/modules/{release}/build")
    if (build / "include").is_dir() or Path("/sys/kernel/kheaders.tar.xz").exists():
        return None
    return (f"kernel headers are missing ({build}): install linux-headers-$(uname -r), or "
            "link a Debian linux-headers-amd64 tree there (scripts/setup.sh does it)")


def _check_tracefs() -> str | None:
    tracefs = tracefs_.find()
    if tracefs is None and tracefs_.unreadable() is not None:
        return (f"needs root ({tracefs_.unreadable()} is readable only by root): run "
                "svctrace with sudo")
    if tracefs is None:
        return ("tracefs is not mounted: mount -t tracefs tracefs /sys/kernel/tracing "
                "(svctrace run and doctor mount it themselves as root)")
    missing = [tp for tp in tracepoints() if not (tracefs / "events" / tp).is_dir()]
    if missing:
        return (f"this kernel lacks the tracepoint(s) {', '.join(missing)} "
                f"(under {tracefs}/events): use --backend strace")
    return None


def _check_lockdown() -> str | None:
    try:
        mode = Path("/sys/kernel/security/lockdown").read_text()
    except OSError:
        return None
    # confidentiality forbids bpf_probe_read_kernel and tracefs; integrity allows both
    if "[confidentiality]" in mode:
        return ("kernel lockdown is [confidentiality], which forbids reading kernel memory "
                "from BPF: boot with lockdown=integrity (or none), or use --backend strace")
    return None


def _check_btf() -> str | None:
    if not btf.VMLINUX.exists():
        return (f"{btf.VMLINUX} is missing, so kernel struct offsets cannot be "
                "verified: needs a kernel built with CONFIG_DEBUG_INFO_BTF, or use "
                "--backend strace")
    try:
        sock_common_offsets()
    except btf.BtfError as exc:
        return (f"the kernel's socket structs are not readable as expected ({exc}): "
                "use --backend strace and report the kernel version")
    return None


def _check_pid_namespace() -> str | None:
    return pidns.unsupported_reason()


# Cheap checks in the order a user must fix them: (name, check).
_CHECKS = (("privileges", _check_privileges), ("bcc", _check_bcc),
           ("kernel headers", _check_headers), ("tracefs", _check_tracefs),
           ("lockdown", _check_lockdown), ("BTF struct offsets", _check_btf),
           ("pid namespace", _check_pid_namespace))


def _source_defines(offsets: dict[str, int], ringbuf_pages: int,
                    aggs_max: int | None = None, stacks: bool = False,
                    join: bool = True) -> list[str]:
    tracefs = tracefs_.find() or tracefs_.DIRS[0]
    exit_format = tracefs / "events/sched/sched_process_exit/format"
    flags = [f"-D{name}={value}" for name, value in offsets.items()]
    flags.append(f"-DRINGBUF_PAGES={ringbuf_pages}")
    parm1, parm4, rc = _PT_REGS.get(os.uname().machine, _PT_REGS["x86_64"])
    flags += [f"-DOFF_REG_PARM1={parm1}", f"-DOFF_REG_PARM4={parm4}", f"-DOFF_REG_RC={rc}"]
    if aggs_max:
        flags.append(f"-DAGGS_MAX={aggs_max}")
    if stacks:  # off: the freeze code is not compiled at all
        flags.append("-DSVCT_STACKS=1")
    if join:  # off: one global epoch, connects not folded (the program before the join)
        flags.append("-DSVCT_JOIN=1")
    syscalls = FIRST_BYTES_SYSCALLS.get(platform.machine())
    if syscalls and all(define in offsets for define in FIRST_BYTES_REGS[platform.machine()]):
        flags.append("-DSVCT_FIRST_BYTES=1")
        flags += [f"-D{name}={number}" for name, number in syscalls.items()]
    ns = pidns.current()
    flags += [f"-DPIDNS_DEV={ns.kernel_dev}ULL", f"-DPIDNS_INO={ns.inode}ULL"]
    try:  # group_dead appeared in the tracepoint's format in 6.x; older ones lack it
        if "group_dead" in exit_format.read_text():
            flags.append("-DHAS_GROUP_DEAD=1")
    except OSError:
        pass
    return flags


def _load_program(ringbuf_pages: int, aggs_max: int | None = None, stacks: bool = False,
                  join: bool = True) -> tuple[LoadedProgram, str]:
    """Load bpf/svctrace.bpf.c (its TRACEPOINT_PROBEs attached) and say how (bpf_program:
    "compiled" by bcc, ~0.35 s of CPU; "kept" from earlier this boot; or why the kept
    one was refused)."""
    defines = _source_defines(sock_common_offsets(), ringbuf_pages, aggs_max, stacks, join)
    kinds = {name: (_PROG_TYPE_KPROBE, 0) for name in _UPROBES}
    try:
        # a kernel that refuses uprobe programs still traces everything else (a note says)
        return bpf_program.load("svctrace.bpf.c", defines, IMAGE_PREFIX, kinds,
                                optional=frozenset(_UPROBES))
    except bpf_image.ImageError as exc:
        raise BackendUnavailable(f"the eBPF program did not compile or load:\n{exc}"
                                 ) from exc


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


@functools.lru_cache(maxsize=4096)
def _destination(family: int, proto: int, addr_len: int, addr: bytes, dport: int
                 ) -> Destination:
    """The record's destination (frozen: one object per distinct one; ipaddress's text
    form alone cost ~8 µs a record)."""
    fam = _FAMILIES.get(family, "other")
    transport = _PROTOS.get(proto, "other")
    if fam == "inet" and addr_len == 4:
        return Destination(fam, transport, str(ipaddress.IPv4Address(addr[:4])), dport)
    if fam == "inet6" and addr_len == 16:
        return Destination(fam, transport, str(ipaddress.IPv6Address(addr[:16])), dport)
    if fam == "unix":
        path = addr[:addr_len]
        if path[:1] == b"\0":  # abstract name: exact length, may hold NULs
            return Destination(fam, "unix", "@" + path[1:].decode(errors="replace"))
        return Destination(fam, "unix", _text(path))
    return Destination(fam, transport, "", dport if fam in ("inet", "inet6") else None)


def decode_dns(raw: bytes) -> Lookup:
    """A struct svct_dns record -> Lookup("dns"): the bytes, parsed by the join."""
    head, length, stream, data = _DNS.unpack(raw)
    (ts, pid, tid, _ppid, _result, _comm, dport, _lport, _kind, family, proto, addr_len,
     addr, _count) = _EVENT.unpack(head)
    server = _destination(family, proto, addr_len, addr, dport)
    return Lookup("dns", ts, None, pid, tid, server=server,
                  payload=data[:min(length, len(data))], stream=bool(stream))


def decode_nss(raw: bytes) -> Lookup:
    """A struct svct_nss record -> Lookup("nss"): getaddrinfo's name and addresses."""
    head, naddr, families, addrs, name = _NSS.unpack(raw)
    ts, pid, tid, _ppid, result = struct.unpack_from("<QIIIi", head)
    addresses = []
    for i in range(min(naddr, 8)):
        raw_addr = addrs[i * 16:(i + 1) * 16]
        if families[i] == 2:
            addresses.append(str(ipaddress.IPv4Address(raw_addr[:4])))
        elif families[i] == 10:
            addresses.append(str(ipaddress.IPv6Address(raw_addr)))
    return Lookup("nss", ts, None, pid, tid, name=_text(name),
                  addresses=tuple(dict.fromkeys(addresses)), held=result == 1)


def libc_of(pid: int) -> str | None:
    """The C library file process `pid` maps, as this process can open it (through
    /proc/PID/root: a container's libc is another file than ours), or None."""
    try:
        with open(f"/proc/{pid}/maps") as fh:
            for line in fh:
                found = _LIBC.search(line.rstrip("\n"))
                if found:
                    inside = f"/proc/{pid}/root{found.group(1)}"
                    return inside if os.path.exists(inside) else found.group(1)
    except OSError:
        return None
    return None


def decode(raw: bytes) -> Event | ProcessEvent | Freeze:
    """One ring buffer record -> Event / ProcessEvent. Noise is the core's to judge."""
    if len(raw) == _FIRST_SIZE:  # a first send: its record, then its first bytes
        head, size, _pad, data = _FIRST.unpack(raw)
        return dataclasses.replace(decode(head), first_bytes=data[:min(size, len(data))])
    (ts, pid, tid, ppid, result, comm, dport, lport, kind, family, proto, addr_len, addr,
     count) = _EVENT.unpack(raw)
    name = _KINDS.get(kind, "?")
    if name == "freeze":  # result: the kind of the record it copies
        trigger = _KINDS.get(result, "?")
        if trigger == "thread":
            return Freeze(ts, pid, tid, _text(comm), trigger, None, ppid, count)
        return Freeze(ts, pid, tid, _text(comm), trigger,
                      _destination(family, proto, addr_len, addr, dport), 0, count)
    if name in _PROCESS_KINDS:
        return ProcessEvent(name, ts, None, pid, ppid=ppid, comm=_text(comm),
                            cmdline=_exec_cmdline(pid, _text(comm), addr[:addr_len])
                            if name == "exec" else (), tid=tid if name == "thread" else 0)
    # a listener's destination is its own bound address and port
    dest = _destination(family, proto, addr_len, addr, lport if name == "listen" else dport)
    return Event(name, ts, None, pid, tid, _text(comm), dest, result,
                 lport if family in (2, 10) and lport else None, max(count, 1))


def _exec_cmdline(pid: int, comm: str, filename: bytes) -> tuple[str, ...]:
    """argv from /proc if the process still runs the program that exec event announced,
    else the exec'd filename alone (argv is not copied in the kernel: it may be huge)."""
    if not pidns.proc_is_ours():  # /proc of another namespace: pid N there is not ours
        return (filename.decode(errors="replace"),)
    # Read raw: the check needs the kernel's comm as the record has it, and psutil's name()
    # widens a 15-byte comm from the command line; this also runs once per exec record.
    try:
        if Path(f"/proc/{pid}/comm").read_text().rstrip("\n") == comm:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
            if raw:
                return tuple(arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1])
    except OSError:
        pass
    return (filename.decode(errors="replace"),)


PERF_EVENT_IOC_DISABLE = 0x2401  # include/uapi/linux/perf_event.h: _IO('$', 1)


def detach(bpf) -> None:
    """Stop every program at once, and let a background process wait for the kernel.

    Closing a tracepoint's last perf event fd unregisters the probe and waits for RCU
    grace periods under a kernel mutex: ~70 ms per tracepoint, ~1.7 s of wall time for
    the program's 23, measured here (Linux 6.18), whether bcc closes them or process exit
    does, and no faster from parallel threads. So each event is disabled now (no program
    runs after this returns; an ioctl, no grace period), a detached helper inherits the
    fds, and this process drops its own references cheaply: the helper's exit closes the
    last ones after the runner is gone, on nobody's wall clock."""
    fds = [*bpf.tracepoint_fds.values(), *bpf.uprobe_fds.values()]
    for fd in fds:
        try:
            fcntl.ioctl(fd, PERF_EVENT_IOC_DISABLE, 0)
        except OSError:
            pass
    sync_w = None
    if fds:
        sync_r, sync_w = os.pipe()
        try:
            # The shell leaves at once; its background `read` (no job control: stdin must
            # be redirected explicitly) returns at EOF, once we dropped our references
            # below, and its exit closes the inherited fds last. Nothing waits for it.
            subprocess.run(["/bin/sh", "-c", "exec 3<&0; read x <&3 & exit 0"],
                           pass_fds=fds, stdin=sync_r, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True, check=False)
        except OSError:
            os.close(sync_w)  # no /bin/sh: detach here, slowly
            sync_w = None
        finally:
            os.close(sync_r)
    try:
        bpf.cleanup()
    finally:
        if sync_w is not None:
            os.close(sync_w)


class EbpfBackend(Backend):
    """Kernel tracepoints (bcc): sees C libraries (libpq, librdkafka) and every subprocess."""

    name: ClassVar[str] = "ebpf"
    clock: ClassVar[str] = "mono"
    blind_spots: ClassVar[tuple[str, ...]] = (
        "processes not descended from the command (a service's own traffic, daemons)",
        "AF_UNIX sends to an unbound peer (socketpair, a server's accepted socket): "
        "counted as sends_unknown_dest, not reported",
        "connects submitted through io_uring (IORING_OP_CONNECT); their sends are seen",
        "netlink and other non-IP, non-unix families: dropped in the kernel",
        "processes of the command that enter a PID namespace of their own (unshare "
        "--pid inside a test): counted as foreign_pidns_events, not reported",
        "protocols are recognised from the first 256 bytes of a socket's first send "
        "(its first iovec for sendmsg/writev); sends through io_uring, sendfile or "
        "splice carry no bytes",
    ) + (() if platform.machine() in FIRST_BYTES_SYSCALLS else (
        f"no protocol is recognised on {platform.machine()}: the first bytes of a send are "
        "read through x86_64's syscall registers only",))

    def __init__(self) -> None:
        self._bpf = None
        self._pending: list[Event | ProcessEvent] = []
        self._events = 0
        self._decode_errors: list[str] = []
        self._ringbuf_pages = DEFAULT_RINGBUF_PAGES
        self._final_stats: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        self._drained_sends = 0  # folded counts read from the maps themselves at stop()
        self._drained_connects = 0
        self._lost_in_windows = 0  # lost records the `losses` windows told of
        self._first_bytes: dict[tuple, bytes] = {}  # (pid, dest, lport) -> first bytes
        # "compiled", "kept", or why the kept one was refused (a run note): _load_program
        self.program_origin = ""
        self.nss_note = ""  # why getaddrinfo is not traced, if it is not
        self._join = True  # kernel_join: SVCT_JOIN compiled in
        self.join_note = ""  # why the marker pipe is not known to the kernel, if it is not

    @classmethod
    def prepare_host(cls) -> list[str]:
        note = tracefs_.mount()
        return [note] if note else []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        for _name, check in _CHECKS:
            reason = check()
            if reason:
                return reason
        return None

    @classmethod
    def diagnose(cls) -> list[tuple[str, bool, str]]:
        return diagnose()

    def prepare(self, ctx: RunContext) -> None:
        super().prepare(ctx)
        # Checked once, where they come from: ringbuf_pages by config.py, availability by
        # select_backend(); a failed compile still raises BackendUnavailable below.
        pages = int(ctx.settings.get("ringbuf_pages", DEFAULT_RINGBUF_PAGES))
        self._ringbuf_pages = pages
        # aggs_max: size of the send-folding map; tests shrink it to force evictions
        # stacks: the runner holds a stack taker that resumes every stopped process
        self._join = bool(ctx.settings.get("kernel_join", True))
        if self._join and _kernel_version() < JOIN_KERNEL:
            self._join = False  # the owners' epochs need BPF's atomic fetch-and-add
            self.join_note = (f"kernel_join needs Linux {JOIN_KERNEL[0]}.{JOIN_KERNEL[1]}; "
                              "this kernel folds as with kernel_join = false")
        self._bpf, self.program_origin = _load_program(
            pages, ctx.settings.get("aggs_max"), bool(ctx.settings.get("stacks")), self._join)
        self._bpf.open_ring_buffer("events", self._on_event)
        if self._join and ctx.marker_pipe:
            self._calibrate(ctx.marker_pipe)

    def _calibrate(self, path: str) -> None:
        """Tell the program which file the marker pipe is: one empty write to it from this
        process, which the program reads through the write's fd exactly as it reads a
        marker write (a stat() of the path may name another inode: overlayfs). If that
        fails, every marker-looking write counts (a note says so), as without the join."""
        table = self._bpf["marker_pipe"]
        leaf = table.Leaf()
        leaf.calibrate = os.getpid()
        table[ctypes.c_int(0)] = leaf
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                os.write(fd, b"")
            finally:
                os.close(fd)
        except OSError as exc:
            self.join_note = f"the marker pipe could not be told to the kernel ({exc})"
        found = table[ctypes.c_int(0)]
        if not found.ino and not self.join_note:
            self.join_note = "the kernel did not see the marker pipe's calibration write"
        if self.join_note:
            self.join_note += ("; any write of the tree that looks like a marker ends "
                               "folds, and writers of such bytes own their children")
            found.calibrate = 0
            table[ctypes.c_int(0)] = found

    def _on_event(self, _ctx, data, size: int) -> int:
        # Runs inside ring_buffer_consume(); an exception here would be swallowed by ctypes.
        try:
            if size == _DNS.size:
                record = decode_dns(ctypes.string_at(data, size))
            elif size == _NSS.size:
                record = decode_nss(ctypes.string_at(data, size))
            elif size not in (_EVENT.size, _FIRST_SIZE):
                raise ValueError(f"record of {size} bytes, expected {_EVENT.size}, "
                                 f"{_FIRST_SIZE}, {_DNS.size} or {_NSS.size}: "
                                 "bpf/svctrace.h and its mirrors disagree")
            else:
                raw = ctypes.string_at(data, size)
                record = decode(raw)
                if type(record) is Event and record.kind == "send":
                    firsts = _SEND_FIRSTS.unpack_from(raw, _SEND_FIRSTS_AT)[0]
                    if firsts or record.first_bytes is not None:  # else: as it came
                        self._events += 1
                        self._pending.extend(self._folded_firsts(record, firsts))
                        return 0
        except Exception as exc:
            self._decode_errors.append(str(exc))
            return 0
        self._events += 1
        self._pending.append(record)
        return 0

    def _folded_firsts(self, send: Event, firsts: int) -> list[Event]:
        """A send record as user space reads it. A first send's bytes are kept per process
        and destination; a kernel_join tail whose folded sends include `firsts` other
        sockets' first sends with those very bytes is split in two: those, as one record
        with the bytes (count = connections recognised from them), and the rest. Keyed by
        the local port too: a tail is a copy of the record that began it, and another
        socket's first send with other bytes may have come in between."""
        key = (send.pid, send.dest, send.local_port)
        if send.first_bytes is not None:
            if len(self._first_bytes) >= _FIRST_BYTES_KEPT and key not in self._first_bytes:
                self._first_bytes.clear()  # a bound, not a cache: a miss only undercounts
            self._first_bytes[key] = send.first_bytes
            return [send]
        data = self._first_bytes.get(key) if firsts else None
        if data is None or firsts > send.count:
            return [send]
        rest = [dataclasses.replace(send, count=send.count - firsts)] \
            if send.count > firsts else []
        return [dataclasses.replace(send, count=firsts, first_bytes=data), *rest]

    def child_started(self, pid: int) -> None:
        """pid (in our namespace) waits in a read() of its gate pipe; it is traced from
        that read's return on: the program joins it to the traced set in its own context,
        where its kernel pid is known (a container's pid is not the kernel's)."""
        if self._bpf is None:
            raise BackendFailed("child_started() before prepare() or after stop()")
        self._attach_nss(pid)
        self._bpf["seeds"][ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        waiting = self._bpf["seeding"]
        waiting[0] = ctypes.c_uint64(waiting[0].value + 1)

    def _attach_nss(self, pid: int) -> None:
        """Uprobes on getaddrinfo of the libc `pid` maps (once): names from the hosts file
        and nss. Without them names come from DNS replies only (a run note says so)."""
        if self._bpf is None or self._bpf.uprobe_fds or self.nss_note:
            return
        path = libc_of(pid)
        try:
            refused = [why for name, why in self._bpf.refused.items() if name in _UPROBES]
            if refused:
                raise BackendFailed(refused[0])
            if path is None:
                raise BackendFailed(f"no C library in /proc/{pid}/maps")
            _, offset = load_bcc().BPF._check_path_symbol(path.encode(), b"getaddrinfo",
                                                          None, -1)
            for name, (_symbol, retprobe) in _UPROBES.items():
                self._bpf.attach_uprobe(name, path, offset, retprobe)
        except Exception as exc:  # bcc raises plain Exception when the symbol is missing
            self.nss_note = (f"host names from getaddrinfo (hosts file, nss) are not "
                             f"traced: {exc}; names come from DNS replies only")

    def hold_lookups(self) -> bool:
        """Stop each process at its getaddrinfo results until the reader resumes it (the
        guard refusing services by host name); False when getaddrinfo is not traced."""
        if self._bpf is None or not self._bpf.uprobe_fds:
            return False
        self._bpf["gai_hold"][ctypes.c_int(0)] = ctypes.c_uint32(1)
        return True

    def poll(self) -> list[Event | ProcessEvent]:
        if self._bpf is None:
            return []
        self._bpf.ring_buffer_consume()
        if self._decode_errors:
            raise BackendFailed(f"undecodable eBPF event: {self._decode_errors[0]}")
        records, self._pending = self._pending, []
        return records + self._losses()

    def _losses(self) -> list[Lost]:
        """The loss windows the kernel recorded since the last call, taken out of the map
        (one empty-map lookup while nothing is lost)."""
        table = self._bpf["losses"]
        found = []
        for key in list(table.keys()):
            try:
                value = table.pop(key)
            except KeyError:
                continue
            pid, _pad, _epoch = _LOSS_KEY.unpack(bytes(key))
            first, last, count = _LOSS.unpack(bytes(value))
            if count:
                found.append(Lost(pid, first, last, count))
        self._lost_in_windows += sum(lost.count for lost in found)
        return found

    def stop(self) -> list[Event | ProcessEvent]:
        if self._bpf is None:
            return []
        try:
            tails = self._tails()
            self._drained_sends = sum(t.count for t in tails if t.kind == "send")
            self._drained_connects = sum(t.count for t in tails if t.kind == "connect")
            records = self.poll() + tails
        finally:  # keep the kernel counters for stats() even if the drain failed
            self._final_stats = self._kernel_counters()
            detach(self._bpf)
            self._bpf = None
        return records

    def _tails(self) -> list[Event]:
        """Sends (per socket) and connects (per thread, destination and result) the kernel
        folded and has not reported yet."""
        tails = []
        maps = [self._bpf["aggs"]] + ([self._bpf["dest_aggs"]] if self._join else [])
        for _key, agg in (item for table in maps for item in table.items()):
            if not agg.count:
                continue
            first = decode(bytes(agg.first))
            if isinstance(first, Event):
                tail = dataclasses.replace(first, mono_ns=agg.last_ts, tid=agg.last_tid,
                                           comm=_text(bytes(agg.last_comm)),
                                           count=agg.count, first_bytes=None)
                tails += self._folded_firsts(tail, agg.firsts) if tail.kind == "send" \
                    else [tail]
        return tails

    def _kernel_counters(self) -> dict[str, int]:
        counters = self._bpf["counters"]
        return {name: counters.sum(slot) for name, slot in _COUNTERS.items()}

    def notes(self) -> list[str]:
        refused = self.program_origin not in ("", "kept", "compiled")
        return ([self.program_origin] if refused else []) + \
            ([self.nss_note] if self.nss_note else []) + \
            ([self.join_note] if self.join_note else [])

    def stats(self) -> dict:
        counters = self._kernel_counters() if self._bpf is not None else self._final_stats
        folded, tailed = counters.pop("folded_sends"), counters.pop("tailed_sends")
        folded_c, tailed_c = counters.pop("folded_connects"), counters.pop("tailed_connects")
        unkept = counters["lost_events"] - self._lost_in_windows
        if self._bpf is None and unkept > 0:
            # lost while the `losses` map was full (or in the instant its window was
            # drained): no test can be told
            counters["lost_unkept"] = unkept
        if self._bpf is None:
            # After the final drain every folded send was reported in a tail record,
            # unless the LRU map evicted its socket's record first: those counts are lost.
            counters["evicted_sends"] = max(0, folded - tailed - self._drained_sends)
            if self._join:
                counters["evicted_connects"] = max(0, folded_c - tailed_c
                                                   - self._drained_connects)
        return {"events": self._events, **counters,
                "ringbuf_bytes": self._ringbuf_pages * os.sysconf("SC_PAGE_SIZE")}


def diagnose() -> list[tuple[str, bool, str]]:
    """(check, ok, detail or fix) for `svctrace doctor`; ends by compiling and loading."""
    results = []
    for name, check in _CHECKS:
        reason = check()
        results.append((name, reason is None, reason or _detail(name)))
    results.append(("kernel join", True, _join_detail()))
    if all(ok for _name, ok, _detail_text in results):
        try:
            bpf, origin = _load_program(DEFAULT_RINGBUF_PAGES)
            probes = bpf.num_open_tracepoints()
            detach(bpf)
            how = {"compiled": f"compiled by bcc; kept until reboot in {boot_cache.DIR}",
                   "kept": f"compiled earlier this boot, kept in {boot_cache.DIR}"}
            results.append(("compile+load", True, f"{probes} tracepoint programs attached "
                                                  f"({how.get(origin, origin)})"))
        except BackendUnavailable as exc:
            results.append(("compile+load", False, str(exc)))
    else:
        results.append(("compile+load", False, "skipped: fix the checks above first"))
    return results


def _join_detail() -> str:
    """What this kernel does with kernel_join (informational: either way it traces)."""
    if _kernel_version() < JOIN_KERNEL:
        return (f"off (Linux {JOIN_KERNEL[0]}.{JOIN_KERNEL[1]} or newer folds records per test "
                "phase in the kernel; here they fold per socket, as with kernel_join = false)")
    return ("on (connects and sends fold per test phase, thread and destination in the "
            "kernel; kernel_join = false in [tool.svctrace] turns it off)")


def _detail(name: str) -> str:
    """What a passing check found (for doctor's output)."""
    if name == "BTF struct offsets":
        names = {**SOCK_COMMON_DEFINES,
                 **{d: f"{st}.{m}" for d, (st, m) in KERNEL_DEFINES.items()}}
        return ", ".join(f"{names[k]}={v}" for k, v in sock_common_offsets().items())
    if name == "pid namespace":
        return pidns.current().label()
    if name == "kernel headers":
        return str(Path(f"/lib/modules/{os.uname().release}/build").resolve())
    if name == "tracefs":
        return str(tracefs_.find())
    if name == "bcc":
        return str(Path(load_bcc().__file__).parent.resolve())
    return "ok"
