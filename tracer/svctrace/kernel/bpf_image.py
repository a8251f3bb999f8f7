"""A compiled BPF program kept as bytes and loaded without clang.

bcc compiles C with an embedded clang on every construction: 0.35 s of CPU here for
svctrace.bpf.c (1.0 s before bcc_quick.h), most of an eBPF run's fixed cost. The kernel
only needs the result: each program's instructions, the maps they refer to and the
license. So bcc compiles once (bpf_module_create_c_from_string, which also creates the
maps and writes their fds into the code as BPF_PSEUDO_MAP_FD loads), the image is read out
of the module, and every run loads an image itself: create the maps, point those loads at
the new fds, BPF_PROG_LOAD (the verifier still checks everything), attach. An image holds
code for one kernel build and one set of -D defines; boot_cache keeps it per boot, keyed
by both (see image_key).
"""
from __future__ import annotations

import base64
import ctypes
import errno
import functools
import hashlib
import json
import os
import platform
import re
import resource
import struct
import sys
from dataclasses import dataclass

PROG_TYPE_TRACEPOINT = 5
TRACEPOINT = (PROG_TYPE_TRACEPOINT, 0)  # a program's kind: (type, expected attach type)
_BPF_MAP_CREATE, _BPF_PROG_LOAD, _BPF_PROG_ATTACH, _BPF_PROG_DETACH = 0, 5, 8, 9
_LD_IMM64 = 0x18            # BPF_LD | BPF_DW | BPF_IMM: a 64-bit load over two slots
_PSEUDO_MAP_FD = 1          # its src_reg when imm is a map fd
_INSN = struct.Struct("=BBhi")  # code, the two registers' nibbles, off, imm (native order)
# struct bpf_insn's dst_reg:4, src_reg:4 bitfields: src is the high nibble on little-endian
_SRC_SHIFT = 4 if sys.byteorder == "little" else 0
_SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "ppc64": 361, "s390x": 351,
            "riscv64": 280}
_EAGAIN_RETRIES = 20
FORMAT = 1  # bump when the serialized layout changes
RINGBUF_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


class ImageError(Exception):
    """The program could not be compiled, read out or loaded (message says why)."""


@dataclass(frozen=True)
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key_desc: str    # bcc's JSON type descriptions: user space builds ctypes types from them
    leaf_desc: str
    compiled_fd: int  # the fd the code refers to; remapped at load


@dataclass(frozen=True)
class Image:
    license: str
    kern_version: int
    maps: tuple[MapSpec, ...]
    programs: tuple[tuple[str, bytes], ...]  # (function name, instructions)

    def to_bytes(self) -> bytes:
        return json.dumps({
            "format": FORMAT, "license": self.license, "kern_version": self.kern_version,
            "maps": [m.__dict__ for m in self.maps],
            "programs": [[name, base64.b64encode(code).decode()]
                         for name, code in self.programs]}).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Image:
        try:
            data = json.loads(raw)
            if data["format"] != FORMAT:
                raise ImageError(f"image format {data['format']}, expected {FORMAT}")
            return cls(str(data["license"]), int(data["kern_version"]),
                       tuple(MapSpec(**m) for m in data["maps"]),
                       tuple((str(n), base64.b64decode(c)) for n, c in data["programs"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ImageError(f"unreadable program image: {exc!r}") from exc


@functools.lru_cache(maxsize=None)
def libbcc(path: str) -> ctypes.CDLL:
    """Our own handle on libbcc.so (path: bcc.libbcc.lib._name) with the prototypes used
    here declared, leaving bcc's handle as bcc set it up; made once per process (the
    tracer and the guard both load through it)."""
    lib = ctypes.CDLL(path, use_errno=True)
    vp, sz, i, cp = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p
    for name, restype, argtypes in (
            ("bpf_module_create_c_from_string", vp,
             [cp, ctypes.c_uint, ctypes.POINTER(cp), i, ctypes.c_bool, cp]),
            ("bpf_module_destroy", None, [vp]),
            ("bpf_num_functions", sz, [vp]), ("bpf_function_name", cp, [vp, sz]),
            ("bpf_function_start", vp, [vp, cp]), ("bpf_function_size", sz, [vp, cp]),
            ("bpf_module_license", cp, [vp]), ("bpf_module_kern_version", ctypes.c_uint, [vp]),
            ("bpf_num_tables", sz, [vp]), ("bpf_table_name", cp, [vp, sz]),
            ("bpf_table_fd_id", i, [vp, sz]), ("bpf_table_type_id", i, [vp, sz]),
            ("bpf_table_max_entries_id", sz, [vp, sz]), ("bpf_table_flags_id", i, [vp, sz]),
            ("bpf_table_key_desc_id", cp, [vp, sz]), ("bpf_table_leaf_desc_id", cp, [vp, sz]),
            ("bpf_table_key_size_id", sz, [vp, sz]), ("bpf_table_leaf_size_id", sz, [vp, sz]),
            ("bpf_lookup_elem", i, [i, vp, vp]), ("bpf_get_next_key", i, [i, vp, vp]),
            ("bpf_lookup_and_delete", i, [i, vp, vp]), ("bpf_delete_elem", i, [i, vp]),
            ("bpf_update_elem", i, [i, vp, vp, ctypes.c_ulonglong]),
            ("bpf_attach_tracepoint", i, [i, cp, cp]),
            ("bpf_attach_uprobe", i, [i, i, cp, cp, ctypes.c_ulonglong, i]),
            ("bpf_detach_uprobe", i, [cp]),
            ("bpf_new_ringbuf", vp, [i, RINGBUF_CALLBACK, vp]),
            ("bpf_add_ringbuf", i, [vp, i, RINGBUF_CALLBACK, vp]),
            ("bpf_consume_ringbuf", i, [vp]), ("bpf_free_ringbuf", None, [vp])):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = restype, argtypes
    return lib


def image_key(text: bytes, headers: bytes, cflags: list[str], bcc_version: str) -> str:
    """Everything the compiled code depends on: source, headers, defines, compiler, kernel
    (release and build: struct layouts and helper ids are the running kernel's)."""
    uname = os.uname()
    digest = hashlib.sha256()
    for part in (text, headers, "\0".join(cflags).encode(), bcc_version.encode(),
                 uname.release.encode(), uname.version.encode(), str(FORMAT).encode()):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()[:32]


def compile_image(lib, text: bytes, cflags: list[str]) -> Image:
    """Compile with bcc (libbcc's `lib`) and read the image out; nothing stays loaded."""
    flags = (ctypes.c_char_p * len(cflags))(*(f.encode() for f in cflags))
    module = lib.bpf_module_create_c_from_string(text, 0, flags, len(cflags), True, None)
    if not module:
        raise ImageError("bcc could not compile the program")
    try:
        maps = tuple(_map_spec(lib, module, i) for i in range(lib.bpf_num_tables(module)))
        programs = []
        for i in range(lib.bpf_num_functions(module)):
            name = lib.bpf_function_name(module, i)
            start = lib.bpf_function_start(module, name)
            size = lib.bpf_function_size(module, name)
            programs.append((name.decode(), ctypes.string_at(start, size)))
        image = Image(lib.bpf_module_license(module).decode(),
                      int(lib.bpf_module_kern_version(module)), maps, tuple(programs))
    finally:
        lib.bpf_module_destroy(module)  # closes the compile's maps
    known = {m.compiled_fd for m in image.maps}
    for name, code in image.programs:
        _patch(code, {fd: fd for fd in known}, name)  # refuses what a load could not remap
    return image


def _map_spec(lib, module, i: int) -> MapSpec:
    return MapSpec(lib.bpf_table_name(module, i).decode(), lib.bpf_table_type_id(module, i),
                   lib.bpf_table_key_size_id(module, i), lib.bpf_table_leaf_size_id(module, i),
                   lib.bpf_table_max_entries_id(module, i), lib.bpf_table_flags_id(module, i),
                   lib.bpf_table_key_desc_id(module, i).decode(),
                   lib.bpf_table_leaf_desc_id(module, i).decode(),
                   lib.bpf_table_fd_id(module, i))


def _patch(code: bytes, fds: dict[int, int], program: str) -> bytes:
    """code with every map-fd load pointing at fds[old fd]. Any other pseudo load (map
    values, BTF ids) has no meaning outside the compiling process: ImageError."""
    if len(code) % 8:
        raise ImageError(f"{program}: {len(code)} bytes is not whole instructions")
    out = bytearray(code)
    i = 0
    while i < len(out):
        op, regs, off, imm = _INSN.unpack_from(out, i)
        if op == _LD_IMM64:
            src = (regs >> _SRC_SHIFT) & 0xF
            if src == _PSEUDO_MAP_FD:
                if imm not in fds:
                    raise ImageError(f"{program} refers to map fd {imm}, which is no map of "
                                     "the program")
                _INSN.pack_into(out, i, op, regs, off, fds[imm])
            elif src:
                raise ImageError(f"{program} has a 64-bit load of kind {src}, which an image "
                                 "cannot carry")
            i += 16
        else:
            i += 8
    return bytes(out)


class _Syscall:
    """The bpf(2) calls bcc's library has no stable signature for."""

    def __init__(self) -> None:
        number = _SYS_BPF.get(platform.machine())
        if number is None:
            raise ImageError(f"no bpf(2) syscall number known for {platform.machine()}")
        self._number = number
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long

    def __call__(self, cmd: int, attr: bytearray) -> int:
        buf = (ctypes.c_char * len(attr)).from_buffer(attr)
        for _attempt in range(_EAGAIN_RETRIES):
            fd = self._libc.syscall(ctypes.c_long(self._number), ctypes.c_long(cmd), buf,
                                    ctypes.c_uint(len(attr)))
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            # the verifier gives up with EAGAIN when a signal arrives while it runs (a
            # sampling profiler, SIGCHLD): try again, as libbpf does
            if err != errno.EAGAIN:
                break
        raise OSError(err, os.strerror(err))

    def create_map(self, spec: MapSpec) -> int:
        attr = bytearray(48)
        struct.pack_into("=IIIII", attr, 0, spec.type, spec.key_size, spec.value_size,
                         spec.max_entries, spec.flags)
        attr[28:28 + 15] = spec.name.encode()[:15].ljust(15, b"\0")
        return self(_BPF_MAP_CREATE, attr)

    def load_program(self, name: str, code: bytes, license_: bytes, kern_version: int,
                     kind: tuple[int, int], log: ctypes.Array | None = None) -> int:
        """kind: (program type, expected attach type)."""
        insns = ctypes.create_string_buffer(code, len(code))
        lic = ctypes.create_string_buffer(license_)
        attr = bytearray(72)
        struct.pack_into("=IIQQIIQII", attr, 0, kind[0], len(code) // 8,
                         ctypes.addressof(insns), ctypes.addressof(lic),
                         1 if log is not None else 0, len(log) if log is not None else 0,
                         ctypes.addressof(log) if log is not None else 0, kern_version, 0)
        attr[48:48 + 15] = name.encode()[:15].ljust(15, b"\0")
        struct.pack_into("=I", attr, 68, kind[1])  # after prog_ifindex
        return self(_BPF_PROG_LOAD, attr)

    def attach(self, cmd: int, target_fd: int, prog_fd: int, attach_type: int) -> None:
        """BPF_PROG_ATTACH / BPF_PROG_DETACH of a program to a cgroup."""
        self(cmd, bytearray(struct.pack("=IIII", target_fd, prog_fd, attach_type, 0)))


def _possible_cpus() -> int:
    """How many per-CPU slots a per-CPU map value has (/sys/.../possible: "0-3,6")."""
    with open("/sys/devices/system/cpu/possible", encoding="ascii") as fh:
        text = fh.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


_PERCPU_TYPES = {5, 6, 10}  # PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH


class Table:
    """One map of a loaded image: ctypes keys and values, as bcc's tables give them."""

    def __init__(self, lib, fd: int, spec: MapSpec, key_type, leaf_type) -> None:
        self._lib = lib
        self.fd = fd
        self.spec = spec
        self.Key = key_type
        self.Leaf = leaf_type
        self.percpu = spec.type in _PERCPU_TYPES
        if self.percpu:  # the kernel hands out one 8-byte aligned value per possible CPU
            slot = (ctypes.sizeof(leaf_type) + 7) // 8 * 8
            self._value_type = ctypes.c_ubyte * (slot * _possible_cpus())
            self._slot = slot
        else:
            self._value_type = leaf_type

    def _key(self, key):
        return key if isinstance(key, self.Key) else self.Key(key)

    def __getitem__(self, key):
        value = self._value_type()
        if self._lib.bpf_lookup_elem(self.fd, ctypes.byref(self._key(key)),
                                     ctypes.byref(value)) < 0:
            raise KeyError(key)
        return value

    def __setitem__(self, key, leaf) -> None:
        if self._lib.bpf_update_elem(self.fd, ctypes.byref(self._key(key)),
                                     ctypes.byref(leaf), 0) < 0:
            err = ctypes.get_errno() or errno.EINVAL
            raise OSError(err, f"updating map {self.spec.name}: {os.strerror(err)}")

    def pop(self, key):
        """The value of `key`, removed from the map in the same call (a hash map; Linux
        5.14). KeyError when it is absent."""
        value = self._value_type()
        key = self._key(key)
        if self._lib.bpf_lookup_and_delete(self.fd, ctypes.byref(key), ctypes.byref(value)) == 0:
            return value
        if ctypes.get_errno() == errno.ENOENT:
            raise KeyError(key)
        # an older kernel: read, then delete (what changes in between is not seen)
        value = self[key]
        self._lib.bpf_delete_elem(self.fd, ctypes.byref(key))
        return value

    def keys(self):
        key, next_key = None, self.Key()
        while self._lib.bpf_get_next_key(self.fd, ctypes.byref(key) if key is not None
                                         else None, ctypes.byref(next_key)) == 0:
            key, next_key = next_key, self.Key()
            yield key

    def items(self):
        for key in self.keys():
            try:
                yield key, self[key]
            except KeyError:  # deleted (or evicted) between the two calls
                continue

    def sum(self, key) -> int:
        """A per-CPU integer value summed over every CPU."""
        assert self.percpu, f"{self.spec.name} is not a per-CPU map"
        raw = bytes(self[key])
        size = ctypes.sizeof(self.Leaf)
        return sum(int.from_bytes(raw[i:i + size], "little")
                   for i in range(0, len(raw), self._slot))


class LoadedProgram:
    """An image's maps and programs in the kernel, tracepoints attached by name
    (`tracepoint__<category>__<event>`, bcc's TRACEPOINT_PROBE naming).

    kinds: (program type, expected attach type) of the programs that are not tracepoints;
    they are loaded, and attached by the caller (attach_cgroup). optional: programs this
    kernel may refuse (a newer hook): their reasons go to `refused`, the rest still loads."""

    def __init__(self, lib, decode_type, image: Image,
                 kinds: dict[str, tuple[int, int]] | None = None,
                 optional: frozenset[str] = frozenset()) -> None:
        self._lib = lib
        self._decode_type = decode_type
        self._image = image
        self._kinds = kinds or {}
        self._optional = optional
        self.refused: dict[str, str] = {}
        self.map_fds: dict[str, int] = {}
        self.program_fds: dict[str, int] = {}
        self.tracepoint_fds: dict[str, int] = {}
        self.uprobe_fds: dict[str, int] = {}  # event name -> perf event fd
        self._cgroup_links: list[tuple[int, int, int]] = []  # (cgroup fd, prog fd, type)
        self._tables: dict[str, Table] = {}
        self._ringbuf = None
        self._callbacks: list = []
        self._sys = _Syscall()
        try:
            self._load()
        except BaseException:
            self.cleanup()
            raise

    def _load(self) -> None:
        sys_bpf = self._sys
        _lift_memlock()
        remap = {}
        for spec in self._image.maps:
            try:
                fd = sys_bpf.create_map(spec)
            except OSError as exc:
                raise ImageError(f"creating map {spec.name}: {exc.strerror}") from exc
            self.map_fds[spec.name] = fd
            remap[spec.compiled_fd] = fd
        license_ = self._image.license.encode()
        for name, code in self._image.programs:
            patched = _patch(code, remap, name)
            kind = self._kinds.get(name, TRACEPOINT)
            try:
                fd = sys_bpf.load_program(name, patched, license_, self._image.kern_version,
                                          kind)
            except OSError as exc:
                why = (f"the kernel refused program {name}: {exc.strerror}: "
                       f"{_verifier_verdict(sys_bpf, name, patched, self._image, kind)}")
                if name in self._optional:
                    self.refused[name] = why
                    continue
                raise ImageError(why) from exc
            self.program_fds[name] = fd
        for name, fd in self.program_fds.items():
            if name in self._kinds or not name.startswith("tracepoint__"):
                continue
            category, _, event = name[len("tracepoint__"):].partition("__")
            perf_fd = self._lib.bpf_attach_tracepoint(fd, category.encode(), event.encode())
            if perf_fd < 0:
                raise ImageError(f"attaching to tracepoint {category}:{event} failed: "
                                 f"{os.strerror(ctypes.get_errno() or errno.EINVAL)}")
            self.tracepoint_fds[f"{category}:{event}"] = perf_fd

    def num_open_tracepoints(self) -> int:
        return len(self.tracepoint_fds)

    def attach_uprobe(self, name: str, path: str, offset: int, retprobe: bool = False
                      ) -> None:
        """Attach program `name` (loaded as PROG_TYPE_KPROBE) to the function at file
        offset `offset` of binary `path`, at its entry or its return (ImageError)."""
        tag = re.sub(r"[^A-Za-z0-9_]", "_", path)
        event = f"svct_{'r' if retprobe else 'p'}_{tag}_0x{offset:x}_{os.getpid()}"
        fd = self._lib.bpf_attach_uprobe(self.program_fds[name], int(retprobe),
                                         event.encode(), path.encode(), offset, -1)
        if fd < 0:
            raise ImageError(f"attaching {name} to {path}+0x{offset:x} failed: "
                             f"{os.strerror(ctypes.get_errno() or errno.EINVAL)}")
        self.uprobe_fds[event] = fd

    def attach_cgroup(self, name: str, cgroup_fd: int, attach_type: int) -> None:
        """Attach program `name` to a cgroup (OSError when the kernel refuses)."""
        prog_fd = self.program_fds[name]
        self._sys.attach(_BPF_PROG_ATTACH, cgroup_fd, prog_fd, attach_type)
        self._cgroup_links.append((cgroup_fd, prog_fd, attach_type))

    def detach_cgroups(self) -> None:
        """Detach what attach_cgroup attached (removing the cgroup releases it anyway)."""
        for cgroup_fd, prog_fd, attach_type in self._cgroup_links:
            try:
                self._sys.attach(_BPF_PROG_DETACH, cgroup_fd, prog_fd, attach_type)
            except OSError:
                pass
        self._cgroup_links = []

    def __getitem__(self, name: bytes | str) -> Table:
        name = name.decode() if isinstance(name, bytes) else name
        table = self._tables.get(name)
        if table is None:
            spec = next((m for m in self._image.maps if m.name == name), None)
            if spec is None:
                raise KeyError(name)
            table = Table(self._lib, self.map_fds[name], spec,
                          self._decode_type(json.loads(spec.key_desc)),
                          self._decode_type(json.loads(spec.leaf_desc)))
            self._tables[name] = table
        return table

    def open_ring_buffer(self, name: str, callback) -> None:
        """callback(ctx, data, size) for every record of ring buffer map `name`."""
        fn = RINGBUF_CALLBACK(callback)
        self._callbacks.append(fn)  # ctypes must keep it alive as long as libbcc may call
        fd = self.map_fds[name]
        if self._ringbuf is None:
            self._ringbuf = self._lib.bpf_new_ringbuf(fd, fn, None)
            if not self._ringbuf:
                raise ImageError(f"could not open ring buffer {name}")
        elif self._lib.bpf_add_ringbuf(self._ringbuf, fd, fn, None) < 0:
            raise ImageError(f"could not open ring buffer {name}")

    def ring_buffer_consume(self) -> None:
        if self._ringbuf is not None:
            self._lib.bpf_consume_ringbuf(self._ringbuf)

    def cleanup(self) -> None:
        """Close everything (idempotent). Closing an attached tracepoint's last fd waits
        for RCU: callers that mind hand those fds to somebody else first (ebpf.detach)."""
        self.detach_cgroups()
        if self._ringbuf is not None:
            self._lib.bpf_free_ringbuf(self._ringbuf)
            self._ringbuf = None
        events = list(self.uprobe_fds)
        for fds in (self.tracepoint_fds, self.uprobe_fds, self.program_fds, self.map_fds):
            for fd in fds.values():
                try:
                    os.close(fd)
                except OSError:
                    pass
            fds.clear()
        for event in events:  # only a uprobe made through tracefs (no uprobe PMU) remains
            self._lib.bpf_detach_uprobe(event.encode())
        self._tables.clear()


def _verifier_verdict(sys_bpf: _Syscall, name: str, code: bytes, image: Image,
                      kind: tuple[int, int]) -> str:
    """Load again with the verifier's log on: its last lines say why (best effort)."""
    log = ctypes.create_string_buffer(1 << 20)
    try:
        fd = sys_bpf.load_program(name, code, image.license.encode(), image.kern_version,
                                  kind, log)
        os.close(fd)
        return "(it loaded on the second try)"
    except OSError:
        lines = log.value.decode(errors="replace").splitlines()
        verdict = [line for i, line in enumerate(lines)
                   if i + 1 < len(lines) and lines[i + 1].startswith("processed ")]
        return (verdict or lines[-3:] or ["no verifier log"])[0]


def _lift_memlock() -> None:
    """Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK (bcc lifts it too)."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        if soft != resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_MEMLOCK,
                               (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    except (ValueError, OSError):
        pass
