"""Minimal reader of the kernel's BTF (/sys/kernel/btf/vmlinux): struct member offsets (pure).

The eBPF backend reads `struct sock_common` fields with bpf_probe_read_kernel at byte offsets
it must not take from the (older) installed headers: `struct sock` already differs between
Debian's 6.1 headers and a 6.18 kernel (`sk_protocol` at 516 there, 532 here). BTF describes the running
kernel, so offsets come from here. Format: Documentation/bpf/btf.rst (header, type section,
string section); only what offsets need is decoded, but every kind's length is parsed.
"""
from __future__ import annotations

import struct
from functools import lru_cache
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")  # magic, version, flags, hdr_len, type/str off+len
_TYPE = struct.Struct("<III")         # name_off, info, size_or_type
_MEMBER = struct.Struct("<III")       # name_off, type, offset

# Kinds (include/uapi/linux/btf.h) and the bytes that follow the 12-byte btf_type.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_FIXED_EXTRA = {INT: 4, ARRAY: 12, VAR: 4, DECL_TAG: 4}
_PER_VLEN = {STRUCT: 12, UNION: 12, ENUM: 8, FUNC_PROTO: 8, DATASEC: 12, ENUM64: 12}
_MODIFIERS = {TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG}


class BtfError(Exception):
    """BTF is missing, malformed, or lacks the struct/member asked for."""


class Btf:
    """Parsed type table of one BTF blob (type ids start at 1; 0 is void)."""

    def __init__(self, data: bytes) -> None:
        if len(data) < _HEADER.size:
            raise BtfError("BTF blob is too short")
        magic, _version, _flags, hdr_len, type_off, type_len, str_off, str_len = \
            _HEADER.unpack_from(data)
        if magic != _MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x} (big-endian or not BTF)")
        self._data = data
        self._types_start = hdr_len + type_off
        self._strs = data[hdr_len + str_off:hdr_len + str_off + str_len]
        self._offsets = self._index(self._types_start, type_len)

    def _index(self, start: int, length: int) -> list[int]:
        """Byte offset of every type record, indexed by type id (slot 0 = void)."""
        data, offsets, pos, end = self._data, [0], start, start + length
        while pos < end:
            offsets.append(pos)
            _name, info, _size = _TYPE.unpack_from(data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            pos += _TYPE.size + _FIXED_EXTRA.get(kind, 0) + _PER_VLEN.get(kind, 0) * vlen
        if pos != end:
            raise BtfError("BTF type section length does not match its records")
        return offsets

    def _name(self, off: int) -> str:
        end = self._strs.index(b"\0", off)
        return self._strs[off:end].decode()

    def _type(self, type_id: int) -> tuple[str, int, int, int, bool]:
        """(name, kind, vlen, size_or_type, kind_flag) of one type id."""
        name_off, info, size = _TYPE.unpack_from(self._data, self._offsets[type_id])
        return (self._name(name_off), (info >> 24) & 0x1F, info & 0xFFFF, size,
                bool(info >> 31))

    def find_struct(self, name: str) -> int:
        """Type id of the complete struct or union called name."""
        needle = b"\0" + name.encode() + b"\0"
        name_offs, at = set(), self._strs.find(needle)
        while at >= 0:  # a name may be stored more than once; collect every copy
            name_offs.add(at + 1)
            at = self._strs.find(needle, at + 1)
        for type_id in range(1, len(self._offsets)):
            name_off, info, _ = _TYPE.unpack_from(self._data, self._offsets[type_id])
            if name_off in name_offs and (info >> 24) & 0x1F in (STRUCT, UNION):
                return type_id
        raise BtfError(f"struct {name} is not in the kernel's BTF")

    def _resolve(self, type_id: int) -> int:
        """Strip typedef/const/volatile/restrict/type_tag."""
        while True:
            _name, kind, _vlen, ref, _flag = self._type(type_id)
            if kind not in _MODIFIERS:
                return type_id
            type_id = ref

    def _members(self, type_id: int):
        _name, _kind, vlen, _size, kind_flag = self._type(type_id)
        pos = self._offsets[type_id] + _TYPE.size
        for i in range(vlen):
            name_off, mtype, moff = _MEMBER.unpack_from(self._data, pos + i * _MEMBER.size)
            bits, bitfield = (moff & 0xFFFFFF, moff >> 24) if kind_flag else (moff, 0)
            yield self._name(name_off), mtype, bits, bitfield

    def _find_member(self, type_id: int, name: str) -> tuple[int, int, int] | None:
        """(bit offset, member type id, bitfield size) of name, searching anonymous
        structs/unions too (sock_common.skc_daddr sits inside an anonymous union)."""
        for mname, mtype, bits, bitfield in self._members(type_id):
            if mname == name:
                return bits, mtype, bitfield
            if not mname:
                inner = self._resolve(mtype)
                if self._type(inner)[1] in (STRUCT, UNION):
                    found = self._find_member(inner, name)
                    if found:
                        return bits + found[0], found[1], found[2]
        return None

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of a member path ("a.b.c") from the start of struct_name."""
        type_id, total = self.find_struct(struct_name), 0
        walked = struct_name
        for part in path.split("."):
            kind = self._type(type_id)[1]
            if kind not in (STRUCT, UNION):
                raise BtfError(f"{walked} is not a struct or union, cannot take .{part}")
            found = self._find_member(type_id, part)
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {path!r} "
                               f"(no {part!r} in {walked}) in the kernel's BTF")
            bits, mtype, bitfield = found
            if bitfield or bits % 8:
                raise BtfError(f"{struct_name}.{path} is a bitfield, not addressable")
            total += bits // 8
            type_id, walked = self._resolve(mtype), f"{walked}.{part}"
        return total

    def struct_size(self, struct_name: str) -> int:
        return self._type(self.find_struct(struct_name))[3]


@lru_cache(maxsize=4)
def load(path: str = str(VMLINUX)) -> Btf:
    """Parse a BTF file (default: the running kernel's); cached per path."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BtfError(f"cannot read {path}: {exc.strerror} (kernel built without "
                       "CONFIG_DEBUG_INFO_BTF?)") from exc
    return Btf(data)


@lru_cache(maxsize=64)
def member_offset(struct_name: str, path: str, btf_path: str = str(VMLINUX)) -> int:
    """Byte offset of struct_name.path in the running kernel (see Btf.member_offset)."""
    return load(btf_path).member_offset(struct_name, path)
