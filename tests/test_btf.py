"""tracer/btf.py: a hand-built BTF blob covering every kind, and the running kernel's BTF."""
from __future__ import annotations

import struct

import pytest

from svctrace.kernel import btf

HAS_VMLINUX_BTF = btf.VMLINUX.exists()


class _Blob:
    """Builds a little-endian BTF blob type by type (ids start at 1)."""

    def __init__(self) -> None:
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.next_id = 1

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, name: str, kind: int, vlen: int, size_or_type: int, extra: bytes = b"",
            kind_flag: bool = False) -> int:
        info = (kind << 24) | vlen | (int(kind_flag) << 31)
        self.types += struct.pack("<III", self.name(name), info, size_or_type) + extra
        self.next_id += 1
        return self.next_id - 1

    def members(self, *items: tuple[str, int, int]) -> bytes:
        return b"".join(struct.pack("<III", self.name(n), t, off) for n, t, off in items)

    def build(self) -> bytes:
        hdr_len = 24
        return (struct.pack("<HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, len(self.types),
                            len(self.types), len(self.strings))
                + bytes(self.types) + bytes(self.strings))


def _sample() -> bytes:
    """struct outer { int a; union { struct { u16 lo; u16 hi; }; u32 both; }; arr[2];
    struct inner named; } with one type of every other kind placed before it, so a wrong
    record length for any kind would shift every later type id."""
    b = _Blob()
    u16 = b.add("u16", btf.INT, 0, 2, struct.pack("<I", 16))
    u32 = b.add("u32", btf.INT, 0, 4, struct.pack("<I", 32))
    ptr = b.add("", btf.PTR, 0, u32)
    arr = b.add("", btf.ARRAY, 0, 0, struct.pack("<III", u32, u32, 2))
    enumerators = struct.pack("<Ii", b.name("A"), 0) + struct.pack("<Ii", b.name("B"), 1)
    b.add("e", btf.ENUM, 2, 4, enumerators)
    b.add("fwd", btf.FWD, 0, 0)
    td = b.add("u32_t", btf.TYPEDEF, 0, u32)
    vol = b.add("", btf.VOLATILE, 0, td)
    const = b.add("", btf.CONST, 0, vol)
    b.add("", btf.RESTRICT, 0, ptr)
    proto = b.add("", btf.FUNC_PROTO, 2, u32, struct.pack("<II", 0, u32) * 2)
    b.add("f", btf.FUNC, 0, proto)
    var = b.add("v", btf.VAR, 0, u32, struct.pack("<I", 1))
    b.add(".data", btf.DATASEC, 1, 4, struct.pack("<III", var, 0, 4))
    b.add("double", btf.FLOAT, 0, 8)
    b.add("tag", btf.DECL_TAG, 0, u32, struct.pack("<i", -1))
    b.add("user", btf.TYPE_TAG, 0, u32)
    b.add("e64", btf.ENUM64, 1, 8, struct.pack("<III", b.name("C"), 1, 0))
    lohi = b.add("", btf.STRUCT, 2, 4, b.members(("lo", u16, 0), ("hi", u16, 16)))
    anon = b.add("", btf.UNION, 2, 4, b.members(("", lohi, 0), ("both", const, 0)))
    inner = b.add("inner", btf.STRUCT, 1, 4, b.members(("x", u32, 0)))
    flags = b.add("flags", btf.STRUCT, 2, 4, b.members(("bit", u32, (1 << 24) | 3),
                                                      ("word", u32, 0)), kind_flag=True)
    b.add("outer", btf.STRUCT, 5, 24, b.members(
        ("a", u32, 0), ("", anon, 32), ("arr", arr, 64), ("named", inner, 128),
        ("fl", flags, 160)))
    return b.build()


def test_every_kind_and_anonymous_members() -> None:
    parsed = btf.Btf(_sample())
    assert parsed.member_offset("outer", "a") == 0
    assert parsed.member_offset("outer", "lo") == 4   # struct inside an anonymous union
    assert parsed.member_offset("outer", "hi") == 6
    assert parsed.member_offset("outer", "both") == 4
    assert parsed.member_offset("outer", "arr") == 8
    assert parsed.member_offset("outer", "named.x") == 16
    assert parsed.member_offset("outer", "fl.word") == 20
    assert parsed.struct_size("outer") == 24


def test_clear_errors() -> None:
    parsed = btf.Btf(_sample())
    with pytest.raises(btf.BtfError, match="no member 'nope'"):
        parsed.member_offset("outer", "nope")
    with pytest.raises(btf.BtfError, match="struct missing is not"):
        parsed.member_offset("missing", "a")
    with pytest.raises(btf.BtfError, match="bitfield"):
        parsed.member_offset("outer", "fl.bit")
    with pytest.raises(btf.BtfError, match="not a struct"):
        parsed.member_offset("outer", "a.b")
    with pytest.raises(btf.BtfError, match="magic"):
        btf.Btf(b"\0" * 32)
    with pytest.raises(btf.BtfError, match="cannot read"):
        btf.load("/nonexistent/vmlinux")


@pytest.mark.skipif(not HAS_VMLINUX_BTF,
                    reason=f"{btf.VMLINUX} missing: kernel built without CONFIG_DEBUG_INFO_BTF")
def test_running_kernel_sock_common() -> None:
    off = {m: btf.member_offset("sock_common", m) for m in (
        "skc_daddr", "skc_rcv_saddr", "skc_dport", "skc_num", "skc_family",
        "skc_v6_daddr", "skc_v6_rcv_saddr")}
    # Layout facts of include/net/sock.h that hold in every kernel since 4.x: the address
    # pair and port pair are 8-byte/4-byte unions read as one word by the socket lookups.
    assert off["skc_rcv_saddr"] == off["skc_daddr"] + 4
    assert off["skc_num"] == off["skc_dport"] + 2
    assert off["skc_family"] == off["skc_num"] + 2
    assert off["skc_v6_rcv_saddr"] == off["skc_v6_daddr"] + 16
    assert max(off.values()) + 16 <= btf.load().struct_size("sock_common")
    # struct sock starts with its sock_common: a dotted path through it agrees
    assert btf.member_offset("sock", "__sk_common.skc_dport") == off["skc_dport"]
    assert btf.member_offset("sock", "sk_protocol") > btf.load().struct_size("sock_common")


@pytest.mark.skipif(not HAS_VMLINUX_BTF, reason="no /sys/kernel/btf/vmlinux on this kernel")
def test_offsets_are_kept_per_kernel_and_only_a_root_only_file_is_believed(tmp_path,
                                                                            monkeypatch):
    import json
    import os

    from svctrace.kernel import boot_cache, btf_cache
    from svctrace.capture import ebpf
    monkeypatch.setattr(boot_cache, "DIR", tmp_path / "run")
    cache = tmp_path / "run" / btf_cache.NAME
    names = {*ebpf.SOCK_COMMON_DEFINES, *ebpf.KERNEL_DEFINES}
    ebpf._offsets.cache_clear()
    try:
        computed = ebpf._offsets()  # from BTF, then kept
    finally:
        ebpf._offsets.cache_clear()
    if os.geteuid() != 0:
        assert not cache.exists()  # only root writes it
        return
    assert btf_cache.load(names) == computed
    assert btf_cache.load(names - {"OFF_SK_ERR"}) is None  # the program's needs changed
    data = json.loads(cache.read_text())
    data["kernel"] = "another kernel"
    cache.write_text(json.dumps(data))
    assert btf_cache.load(names) is None
    btf_cache.store(computed)
    os.chmod(cache, 0o664)  # writable by a group: not believed
    assert btf_cache.load(names) is None
