"""The tier guard's kernel side: a cgroup v2 holding only the command's tree, the
CGROUP_SOCK_ADDR programs of bpf/guard.bpf.c attached to it, their refusals as events, and
the sweep of cgroups left by killed runs."""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import re
import struct
import time
from pathlib import Path

from svctrace.kernel import boot_cache, bpf_program, pidns, tracefs
from svctrace.kernel.bcc_import import load_bcc
from svctrace.kernel.bpf_image import ImageError, LoadedProgram
from svctrace.events import Destination, Event
from svctrace.guard.rules import (MAX_PATHS, MAX_RULES, PATTERN_MAX, DenySpec, GuardError,
                                  Table, entries_for_name)
from svctrace.run.rundirs import running_since
from svctrace.words import counted

# enum bpf_attach_type (include/uapi/linux/bpf.h); bcc 0.26 has no name for the unix hook.
ATTACH = {"connect4": 10, "connect6": 11, "sendmsg4": 14, "sendmsg6": 15, "connect_unix": 49}
PROG_TYPE_CGROUP_SOCK_ADDR = 18
PROGRAMS = {"connect4": "guard_connect4", "connect6": "guard_connect6",
            "sendmsg4": "guard_sendmsg4", "sendmsg6": "guard_sendmsg6",
            "connect_unix": "guard_connect_unix"}
IMAGE_PREFIX = "guard-"  # compiled guards kept in boot_cache.DIR (bpf_program)
OWN_MOUNT = boot_cache.DIR / "cgroup2"  # where svctrace mounts cgroup2 if none is
# svctrace-guard-<pid>-<start>-ns<pid namespace inode>: the cgroup tree is shared across
# PID namespaces (a privileged container's runs and the host's), where one pid names
# different processes; only a runner of our own namespace can be judged dead.
_NAME = re.compile(r"^svctrace-guard-([0-9]+)-([0-9]+)(?:-ns([0-9]+))?$")
# struct guard_event in bpf/guard.h (176 bytes; tests/test_kernel_contract.py checks it).
_EVENT = struct.Struct("<QIIiHHBBBB16s128sI")
_PROTOS = {6: "tcp", 17: "udp"}
RINGBUF_PAGES = 256  # 1 MiB: a tight loop of 20k refusals lost records with 256 KiB
_CAP_SYS_ADMIN, _CAP_BPF, _CAP_NET_ADMIN = 21, 39, 12


def cgroup2_mount() -> Path | None:
    """Where a cgroup v2 hierarchy is mounted in this mount namespace, if anywhere."""
    import psutil  # only guarded runs and doctor ask: its import stays off plain runs
    try:
        mounts = psutil.disk_partitions(all=True)  # /proc/self/mounts, escapes decoded
    except OSError:
        return None
    return next((Path(m.mountpoint) for m in mounts if m.fstype == "cgroup2"), None)


def mount_cgroup2() -> tuple[Path, str | None]:
    """The cgroup2 mount, mounting one (as root) where none is: (path, note or None)."""
    found = cgroup2_mount()
    if found is not None:
        return found, None
    # boot_cache's folder with boot_cache's mode: made here with the umask's, a later run
    # would distrust every program and offset kept in it.
    boot_cache.DIR.mkdir(mode=0o755, exist_ok=True)
    OWN_MOUNT.mkdir(mode=0o755, exist_ok=True)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"cgroup2", str(OWN_MOUNT).encode(), b"cgroup2", 0, None) != 0:
        err = ctypes.get_errno()
        raise GuardError(f"no cgroup v2 hierarchy is mounted and mounting one at {OWN_MOUNT} "
                         f"failed ({os.strerror(err)}): the guard needs cgroup v2 "
                         "(a container needs --privileged or a writable /sys/fs/cgroup)")
    return OWN_MOUNT, f"mounted cgroup2 at {OWN_MOUNT} (none was mounted)"


def _own_cgroup(mount: Path) -> Path:
    """The runner's own cgroup v2 folder (so the guard's cgroup stays inside whatever
    limits the runner has), else the hierarchy's root."""
    try:  # read raw: psutil does not tell cgroups
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                folder = mount / line[3:].lstrip("/")
                if folder.is_dir():
                    return folder
    except OSError:
        pass
    return mount


def _evacuate(folder: Path, parent: Path) -> int:
    """Move the processes still in `folder` (a test's leaked daemon) to `parent`."""
    moved = 0
    for _ in range(10):  # a process may fork while we move its siblings
        try:
            pids = (folder / "cgroup.procs").read_text().split()
        except OSError:
            return moved
        if not pids:
            return moved
        for pid in pids:
            try:
                (parent / "cgroup.procs").write_text(pid)
                moved += 1
            except OSError:
                pass  # gone meanwhile
    return moved


def _remove(folder: Path, parent: Path) -> str | None:
    """rmdir the cgroup after moving out what is left; None, or why it could not be."""
    for attempt in range(50):
        _evacuate(folder, parent)
        try:
            folder.rmdir()
            return None
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return exc.strerror
            time.sleep(0.02)  # an exiting process leaves the cgroup a moment later
    return "still busy"


def _pidns_inode() -> int:
    try:
        return pidns.current().inode
    except OSError:
        return 0


def sweep_cgroups(parent: Path) -> list[str]:
    """Remove guard cgroups whose runner is dead (SIGKILL runs no cleanup): one note each.
    Their programs go with them; processes still in one are moved to `parent`."""
    notes = []
    try:
        entries = [(e, m) for e in os.scandir(parent) if (m := _NAME.match(e.name))]
    except OSError:
        return notes
    for entry, match in entries:
        pid, start, ns = int(match.group(1)), match.group(2), match.group(3)
        if ns is not None and ns != str(_pidns_inode()):
            continue  # another PID namespace's runner: its pid means nothing here
        if running_since(pid) == start:
            continue  # a live runner's (a concurrent run)
        reason = _remove(Path(entry.path), parent)
        notes.append(f"removed the guard cgroup {entry.path}, left by a killed svctrace run "
                     f"(pid {pid})" if reason is None else
                     f"could not remove the guard cgroup {entry.path} left by a killed "
                     f"svctrace run (pid {pid}): {reason}")
    return notes


def _key(fields: tuple) -> bytes:
    """struct guard_key of bpf/guard.h: the port in network order, as the trie compares it."""
    stage, family, proto, port, prefixlen, addr = fields
    return struct.pack("<IBBBB", prefixlen, stage, family, proto, 0) + \
        struct.pack(">H", port) + addr + b"\0\0"


class Guard:  # implements guard.base.Enforcer
    """One run's guard: start() before the command forks, enter(pid) before it is released,
    poll() while it runs, stop() after it exited (idempotent, also on every error path)."""

    def __init__(self, spec: DenySpec, table: Table, shadow: bool = False) -> None:
        self.spec = spec
        self.table = table
        # Shadow: the same programs and records, but nothing is refused (roll a guard out
        # in stages: observe, shadow, enforce).
        self.shadow = shadow
        self.notes: list[str] = list(table.notes)
        self.cgroup: Path | None = None
        self.parent: Path | None = None
        self.refusal = "EPERM"
        self.hooks: list[str] = []
        self._bpf = None
        self._fd: int | None = None
        self._pending: list[Event] = []
        self._errors: list[str] = []
        self._wall_offset = time.time_ns() - time.monotonic_ns()
        self._final: dict = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """None if the kernel guard can work here, else what is missing and the fix."""
        if os.geteuid() != 0:
            return ("the guard needs root (CAP_BPF and CAP_NET_ADMIN to attach cgroup "
                    "programs, CAP_SYS_ADMIN to create a cgroup): run svctrace with sudo")
        try:
            load_bcc()
        except Exception as exc:
            return f"bcc is not importable ({exc}): apt-get install python3-bpfcc"
        mount = cgroup2_mount()
        if mount is None:
            return None  # svctrace mounts one (mount_cgroup2)
        if not os.access(_own_cgroup(mount), os.W_OK):
            return (f"the cgroup v2 folder {_own_cgroup(mount)} is not writable: run the "
                    "container with --privileged (or a writable cgroup namespace)")
        return None

    @classmethod
    def diagnose(cls) -> list[tuple[str, bool, str]]:
        """(check, ok, detail or fix) for `svctrace doctor`: can the guard deny here?"""
        results = []
        reason = cls.unavailable_reason()
        mount = cgroup2_mount()
        results.append(("cgroup v2", mount is not None or os.geteuid() == 0,
                        str(mount) if mount else
                        f"none mounted; svctrace mounts one at {OWN_MOUNT} when run as root"))
        if reason:
            results.append(("guard usable", False, reason))
            return results
        from svctrace.guard.rules import DenySpec as _Spec, Table as _Table
        probe = cls(_Spec("deny", ()), _Table(services=["probe"]))
        try:
            probe.start()
            results.append(("guard attach", True, f"hooks {', '.join(probe.hooks)}; refused "
                                                  f"connects fail with {probe.refusal}"))
        except Exception as exc:
            results.append(("guard attach", False, f"{exc}: run as root in a privileged "
                                                   "container with cgroup v2"))
        finally:
            probe.stop()
        return results

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        reason = self.unavailable_reason()
        if reason:
            raise GuardError(f"--deny/--allow/--guard need the kernel guard: {reason}")
        # Its program also attaches to the connect tracepoints (unix paths): as the ebpf
        # backend does, mount tracefs where a fresh container lacks it.
        mount, note = mount_cgroup2()
        self.notes += [n for n in (tracefs.mount(), note) if n]
        self.parent = _own_cgroup(mount)
        self.notes += sweep_cgroups(self.parent)
        start = running_since(os.getpid())
        self.cgroup = self.parent / f"svctrace-guard-{os.getpid()}-{start}-ns{_pidns_inode()}"
        try:
            self.cgroup.mkdir(mode=0o755)
            self._fd = os.open(self.cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            self._load(self.cgroup.stat().st_ino, len(self.cgroup.relative_to(mount).parts))
        except BaseException:
            self.stop()
            raise

    def _program(self, set_retval: bool) -> LoadedProgram:
        ns = pidns.current()
        defines = [f"-DPIDNS_DEV={ns.kernel_dev}ULL", f"-DPIDNS_INO={ns.inode}ULL",
                   f"-DSTAGES={self.table.stages}",
                   f"-DN_PATTERNS={len(self.table.unix_patterns)}",
                   f"-DMAX_RULES={MAX_RULES}", f"-DMAX_PATHS={MAX_PATHS}",
                   f"-DMAX_SERVICES={max(1, len(self.table.services))}",
                   f"-DRINGBUF_PAGES={RINGBUF_PAGES}"]
        if set_retval:
            defines.append("-DHAS_SET_RETVAL=1")
        if self.shadow:
            defines.append("-DSHADOW=1")
        kinds = {name: (PROG_TYPE_CGROUP_SOCK_ADDR, ATTACH[hook])
                 for hook, name in PROGRAMS.items()}
        # BPF_CGROUP_UNIX_CONNECT came with Linux 6.7: an older kernel refuses that one only
        program, origin = bpf_program.load("guard.bpf.c", defines, IMAGE_PREFIX, kinds,
                                           optional=frozenset({PROGRAMS["connect_unix"]}))
        if origin not in ("kept", "compiled"):
            self.notes.append(f"guard: {origin}")
        return program

    def _load(self, cgid: int, level: int) -> None:
        try:
            self._bpf = self._program(True)
            self.refusal = ("none (shadow: recorded, not refused)" if self.shadow
                            else "ECONNREFUSED (tcp, unix), EPERM (udp)")
        except ImageError as first:
            # bpf_set_retval in sock_addr programs came with Linux 5.19: else EPERM
            try:
                self._bpf = self._program(False)
            except ImageError as exc:
                raise GuardError(f"the guard's BPF programs did not load: {exc}") from first
            if not self.shadow:
                self.notes.append("this kernel refuses bpf_set_retval in connect programs: "
                                  "refused connects fail with EPERM, not ECONNREFUSED")
        where = self._bpf["guard_cgroup"]  # for the connect tracepoint (unix paths)
        where[ctypes.c_int(0)] = ctypes.c_uint64(cgid)
        where[ctypes.c_int(1)] = ctypes.c_uint64(level)
        self._fill()
        for hook, name in PROGRAMS.items():
            try:
                if name in self._bpf.refused:
                    raise OSError(self._bpf.refused[name])
                self._bpf.attach_cgroup(name, self._fd, ATTACH[hook])
            except OSError as exc:
                if hook != "connect_unix":
                    raise GuardError(f"attaching the guard's {hook} program failed: {exc}"
                                     ) from exc
                if self.table.unix_exact or self.table.unix_patterns:
                    self.notes.append(f"this kernel has no unix connect hook ({exc}): unix "
                                      "sockets of denied services are not refused")
                continue
            self.hooks.append(hook)
        self._bpf.open_ring_buffer("refusals", self._on_event)

    def _fill(self) -> None:
        rules = self._bpf["inet_rules"]
        for fields, (action, service, rank) in self.table.inet.items():
            key = rules.Key.from_buffer_copy(_key(fields))
            rules[key] = rules.Leaf(action, service, rank)
        exact = self._bpf["unix_exact"]
        for path, (action, service, rank) in self.table.unix_exact.items():
            key = exact.Key()
            ctypes.memmove(ctypes.addressof(key), path, len(path))
            exact[key] = exact.Leaf(action, service, rank)
        patterns = self._bpf["unix_patterns"]
        for i, (prefix, is_exact, action, service, rank) in enumerate(self.table.unix_patterns):
            leaf = patterns.Leaf()
            leaf.len, leaf.exact = len(prefix), int(is_exact)
            leaf.verdict.action, leaf.verdict.service, leaf.verdict.rank = action, service, rank
            leaf.prefix = prefix[:PATTERN_MAX]
            patterns[ctypes.c_int(i)] = leaf

    def refuses_by_name(self) -> bool:
        return bool(self.table.by_name)

    def learn(self, lookup) -> None:
        """The run resolved a name (events.Lookup): refuse its addresses for every denied
        service whose rule names that host (a getaddrinfo result arrives while its process
        is held, so before its connect; a DNS reply only by the next connect)."""
        if not self.table.by_name or self._bpf is None:
            return
        names_addresses = []
        if lookup.how == "nss" and lookup.name:
            names_addresses.append((lookup.name, lookup.addresses))
        elif lookup.how == "dns" and lookup.payload and not lookup.stream:
            from svctrace.join.dns import parse_reply
            reply = parse_reply(lookup.payload)
            if reply is not None and reply.addresses:
                names_addresses.append((reply.question, reply.addresses))
        rules = self._bpf["inet_rules"]
        for name, addresses in names_addresses:
            for fields, (action, service, rank) in entries_for_name(
                    self.table, name, addresses).items():
                if fields in self.table.inet:
                    continue  # an address rule already decides it
                key = rules.Key.from_buffer_copy(_key(fields))
                rules[key] = rules.Leaf(action, service, rank)

    def enter(self, pid: int) -> None:
        """Put the forked command (blocked on its gate) into the guard's cgroup: it and
        everything it starts are guarded from its first instruction on."""
        assert self.cgroup is not None, "start() first"
        try:
            (self.cgroup / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise GuardError(f"cannot put the command into {self.cgroup}: {exc.strerror}"
                             ) from exc

    def poll(self) -> list[Event]:
        if self._bpf is None:
            return []
        self._bpf.ring_buffer_consume()
        events, self._pending = self._pending, []
        return events

    def stop(self) -> list[Event]:
        """Drain, detach, remove the cgroup (moving leftovers out): every exit path."""
        events = []
        if self._bpf is not None:
            try:
                events = self.poll()
                self._final = self._counters()
            except Exception as exc:
                self.notes.append(f"guard: reading the last refusals failed: {exc}")
        if self._bpf is not None:
            self._bpf.detach_cgroups()  # removing the cgroup releases them anyway
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self.cgroup is not None and self.parent is not None and self.cgroup.exists():
            moved = _evacuate(self.cgroup, self.parent)
            if moved:
                self.notes.append(f"guard: {counted(moved, 'process')} of the command outlived it; "
                                  "they were moved out of the guard's cgroup")
            reason = _remove(self.cgroup, self.parent)
            if reason:
                self.notes.append(f"guard: could not remove {self.cgroup}: {reason}")
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None
        lost = self._final.get("lost_refusal_records", 0)
        if lost:
            self.notes.append(f"guard: {lost} refusal records were lost (a burst faster than "
                              "they were read); run.guard.refusals still counts every one")
        if self._errors:
            self.notes.append(f"guard: {len(self._errors)} undecodable refusal records "
                              f"({self._errors[0]})")
            self._errors = []
        return events

    # -- records -------------------------------------------------------------------------
    def _on_event(self, _ctx, data, size: int) -> int:
        try:
            self._pending.append(self.decode(ctypes.string_at(data, size)))
        except Exception as exc:  # ctypes swallows exceptions raised in callbacks
            self._errors.append(str(exc))
        return 0

    def decode(self, raw: bytes) -> Event:
        (ts, pid, tid, result, _service, port, kind, family, proto, addr_len, comm,
         addr, _pad) = _EVENT.unpack(raw)
        if family == 1:
            path = addr[:addr_len]
            text = ("@" + path[1:].decode(errors="replace") if path[:1] == b"\0"
                    else path.split(b"\0", 1)[0].decode(errors="replace"))
            dest = Destination("unix", "unix", text)
        else:
            address = (ipaddress.IPv4Address(addr[:4]) if family == 2
                       else ipaddress.IPv6Address(addr[:16]))
            dest = Destination("inet" if family == 2 else "inet6",
                               _PROTOS.get(proto, "other"), str(address), port)
        return Event("denied", ts, ts + self._wall_offset, pid, tid,
                     comm.split(b"\0", 1)[0].decode(errors="replace"), dest, result)

    def _counters(self) -> dict:
        denials = self._bpf["denials"]
        per = {name: denials.sum(i) for i, name in enumerate(self.table.services)}
        return {"refusals": {k: v for k, v in per.items() if v},
                "lost_refusal_records": self._bpf["lost"].sum(0)}

    def stats(self) -> dict:
        """run.guard in the report."""
        counters = self._counters() if self._bpf is not None else self._final
        return {"mode": self.spec.mode, "denied": list(self.spec.denied),
                "allowed": list(self.spec.allowed), "tier": self.spec.tier,
                "plan": self.spec.plan, "shadow": self.shadow,
                "refusal": self.refusal, "hooks": list(self.hooks),
                "cgroup": str(self.cgroup) if self.cgroup else None,
                "refusals": counters.get("refusals", {}),
                "lost_refusal_records": counters.get("lost_refusal_records", 0)}


def from_options(smap, baseline: list[str], deny: tuple[str, ...], allow: tuple[str, ...],
                 guard: bool, plan_path: str | None, tier: str | None,
                 command: list[str], shadow: bool = False) -> tuple[Guard | None, dict | None]:
    """The run's guard from `svctrace run` options, and the plan of a tier run: --guard takes
    the tier `--plan/--tier` runs, else the command's own --svctrace-plan/--svctrace-tier."""
    from svctrace.guard.rules import compile_table, deny_spec, plan_from_command
    from svctrace.report.files import load_tier
    tier_spec, plan = None, None
    if guard:
        from_command = plan_from_command(command)
        plan_path, tier = plan_path or from_command[0], tier or from_command[1]
        if not (plan_path and tier):
            raise GuardError("--guard needs the tier to guard: give --plan PLAN --tier NAME, "
                             "or run pytest with --svctrace-plan PLAN --svctrace-tier NAME")
        plan = load_tier(plan_path, tier, "--guard: tier")
        tier_spec = (tier, plan["tiers"][tier]["services"], plan_path)
    spec = deny_spec(smap, list(deny), list(allow), baseline, tier_spec)
    if spec is None:
        if shadow:
            raise GuardError("--shadow goes with --deny, --allow or --guard: it records what "
                             "that guard would refuse")
        return None, None
    return Guard(spec, compile_table(smap, spec.denied), shadow), plan
