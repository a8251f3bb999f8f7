"""The kernel/user contract: bpf/svctrace.h and bpf/guard.h against their Python mirrors
(every field offset and size, every kind, counter and shared constant), and one C style
across bpf/."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from svctrace.capture import ebpf
from svctrace.guard import kernel, rules
from tests.support import cheader

BPF = Path(ebpf.__file__).resolve().parents[3] / "bpf"


def _header(name: str) -> cheader.Header:
    return cheader.parse((BPF / name).read_text())


def test_svct_event_matches_the_decoders_struct_format():
    event = _header("svctrace.h").structs["svct_event"]
    assert event.padding() == 0  # fixed width: no byte depends on the compiler
    assert cheader.format_items(ebpf._EVENT.format) == cheader.expected_items(event)
    assert ebpf._EVENT.size == event.size


def test_a_send_tails_folded_first_sends_are_read_where_the_header_puts_ppid():
    event = _header("svctrace.h").structs["svct_event"]
    assert event.field("ppid").offset == ebpf._SEND_FIRSTS_AT
    assert event.field("ppid").size == ebpf._SEND_FIRSTS.size
    raw = ebpf._EVENT.pack(1, 2, 3, 7, 0, b"", 0, 0, 2, 2, 1, 4, b"\x7f\0\0\1", 9)
    assert ebpf._SEND_FIRSTS.unpack_from(raw, ebpf._SEND_FIRSTS_AT) == (7,)


def test_svct_first_matches_the_decoders_struct_format():
    header = _header("svctrace.h")
    first = header.structs["svct_first"]
    assert first.padding() == 0
    assert cheader.format_items(ebpf._FIRST.format) == cheader.expected_items(first)
    assert first.field("e").size == ebpf._EVENT.size
    assert first.field("data").size == header.defines["SVCT_DATA_LEN"]


@pytest.mark.parametrize("name, mirror", [("svct_loss_key", "_LOSS_KEY"),
                                           ("svct_loss", "_LOSS")])
def test_loss_window_structs_match_the_drains_struct_formats(name, mirror):
    loss = _header("svctrace.h").structs[name]
    fmt = getattr(ebpf, mirror)
    assert loss.padding() == 0
    assert cheader.format_items(fmt.format) == cheader.expected_items(loss)
    assert fmt.size == loss.size
    # the drain unpacks them in this order
    assert [f.name for f in loss.fields] == (["pid", "_pad", "epoch"] if name == "svct_loss_key"
                                             else ["first_ts", "last_ts", "n"])


def test_every_kind_transport_and_counter_of_svctrace_h_is_mirrored():
    header = _header("svctrace.h")
    kinds = {name[len("SVCT_"):].lower(): value
             for name, value in header.enums["svct_kind"].items()}
    assert kinds == {name: value for value, name in ebpf._KINDS.items()}
    protos = {name[len("SVCT_P_"):].lower(): value
              for name, value in header.enums["svct_proto"].items()}
    assert {protos.pop("unknown"), protos.pop("other")} == {0, 4}  # both decode as "other"
    assert protos == {name: value for value, name in ebpf._PROTOS.items()}
    counters = dict(header.enums["svct_counter"])
    assert counters.pop("CNT_SLOTS") == len(counters)
    assert {name[len("CNT_"):].lower(): slot for name, slot in counters.items()} \
        == ebpf._COUNTERS
    sizes = header.structs["svct_event"]
    assert sizes.field("comm").size == header.defines["SVCT_COMM_LEN"]
    assert sizes.field("addr").size == header.defines["SVCT_PATH_LEN"]


def test_guard_event_matches_the_guards_struct_format():
    event = _header("guard.h").structs["guard_event"]
    assert event.padding() == 0
    assert cheader.format_items(kernel._EVENT.format) == cheader.expected_items(event)
    assert kernel._EVENT.size == event.size


def test_guard_key_bytes_put_each_field_where_guard_h_says():
    key = _header("guard.h").structs["guard_key"]
    assert key.padding() == 0
    addr = bytes(range(1, 17))
    raw = kernel._key((5, 10, 17, 5432, 48 + 128, addr))
    assert len(raw) == key.size

    def at(name: str) -> bytes:
        f = key.field(name)
        return raw[f.offset:f.offset + f.size]
    assert int.from_bytes(at("prefixlen"), "little") == 176
    assert (at("stage"), at("family"), at("proto")) == (b"\x05", b"\x0a", b"\x11")
    assert int.from_bytes(at("port"), "big") == 5432  # network order, as the trie compares
    assert at("addr") == addr
    assert at("pad") == b"\0" and at("pad2") == b"\0\0"


def test_guard_constants_match_the_rules_compiler():
    header = _header("guard.h")
    assert header.enums["guard_action"] == {"ACT_ALLOW": rules.ACT_ALLOW,
                                            "ACT_DENY": rules.ACT_DENY}
    assert header.defines["PATTERN_MAX"] == rules.PATTERN_MAX
    assert header.defines["UNIX_PATH"] == rules.UNIX_PATH
    assert header.defines["N_STAGES"] == 2 * len(rules.STAGE_NAMES)  # with and without port
    pattern = header.structs["pattern"]
    assert pattern.field("prefix").size == rules.PATTERN_MAX
    assert header.structs["unix_path"].size >= rules.UNIX_PATH
    # the ring buffer record's addr holds a whole unix path buffer
    assert header.structs["guard_event"].field("addr").size == header.defines["UNIX_BUF"]
    assert set(header.enums["guard_kind"]) == {"KIND_CONNECT", "KIND_SENDMSG"}


@pytest.mark.parametrize("bad", [
    "struct s { __u32 a; int b; };",            # not a fixed-width type
    "struct s { __u32 *p; };",                  # a pointer
    "enum e { A, B = 2, };",                    # a member without its value
    "struct s { __u8 a[N]; };",                 # an undeclared size
    "#define F(x) (x)\n",                       # a function-like macro
    "typedef __u32 t;",                         # anything else
    "struct s { __u8 a; } // no\n;",            # a // comment
])
def test_the_header_reader_refuses_what_it_does_not_understand(bad):
    with pytest.raises((ValueError, KeyError)):
        cheader.parse(bad)


def test_the_header_reader_lays_out_padding_and_unions_as_c_does():
    header = cheader.parse("#define N 3\nstruct in { __u16 a; __u8 b; };\n"
                           "struct s { __u8 x; __u32 y; union { __u8 v[N]; __u64 w; } u; "
                           "struct in i; __u8 z; };")
    s = header.structs["s"]
    assert [(f.name, f.offset, f.size) for f in s.fields] == [
        ("x", 0, 1), ("y", 4, 4), ("u", 8, 8), ("i", 16, 4), ("z", 20, 1)]
    assert (s.size, s.padding()) == (24, 6)


@pytest.mark.parametrize("name", sorted(p.name for p in BPF.iterdir()
                                        if p.suffix in (".c", ".h")))
def test_one_c_style_across_bpf(name):
    """libbpf-tools' style: tabs, /* */ comments, the kernel's __u32-style types."""
    text = (BPF / name).read_text()
    code = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group().count("\n"), text, flags=re.S)
    code = re.sub(r'"(\\.|[^"\\])*"', '""', code)
    assert "//" not in code
    assert not re.search(r"\b[us](8|16|32|64)\b", code), "u32 where __u32 is meant"
    lines = code.splitlines()
    for i, line in enumerate(lines):
        continued = i > 0 and lines[i - 1].rstrip().endswith("\\")
        assert continued or not line.startswith("  "), f"{name}:{i + 1} indented by spaces"
