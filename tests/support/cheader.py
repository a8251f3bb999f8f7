"""A small, strict reader of bpf/'s contract headers: integer #defines, enums with explicit
values, and structs of fixed-width fields laid out as the BPF and x86-64 C ABIs do.

Anything else in a header (a typedef, a pointer, a field of an unknown type, an enum member
without its value) is an error, not skipped: the contract test must not pass by reading
less than the header says."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

SCALARS = {"__u8": (1, "B"), "__u16": (2, "H"), "__u32": (4, "I"), "__u64": (8, "Q"),
           "__s8": (1, "b"), "__s16": (2, "h"), "__s32": (4, "i"), "__s64": (8, "q"),
           "char": (1, "s")}
_INT = re.compile(r"^(0[xX][0-9a-fA-F]+|[0-9]+)[uUlL]*$")
_IDENT = re.compile(r"^[A-Za-z_]\w*$")


@dataclass
class Field:
    name: str
    offset: int
    size: int       # of the whole field (element size times count)
    ctype: str      # "__u32", "char", "struct verdict", "union"
    count: int = 1  # array length; 1 for a scalar


@dataclass
class Struct:
    name: str
    fields: list[Field] = field(default_factory=list)
    size: int = 0
    align: int = 1

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def padding(self) -> int:
        """Bytes the compiler adds between or after fields."""
        return self.size - sum(f.size for f in self.fields)


@dataclass
class Header:
    defines: dict[str, int] = field(default_factory=dict)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    structs: dict[str, Struct] = field(default_factory=dict)

    def constant(self, name: str) -> int:
        for members in self.enums.values():
            if name in members:
                return members[name]
        return self.defines[name]


def _strip_comments(text: str) -> str:
    if "//" in re.sub(r"/\*.*?\*/", "", text, flags=re.S):
        raise ValueError("a // comment: the headers use /* */ only")
    # a comment becomes its line breaks: a #define after a comment stays on a line of its own
    return re.sub(r"/\*.*?\*/", lambda m: " " + "\n" * m.group().count("\n"), text,
                  flags=re.S)


def _int(token: str, header: Header) -> int:
    token = token.strip()
    match = _INT.match(token)
    if match:
        return int(match.group(1), 0)
    if _IDENT.match(token):
        return header.constant(token)
    raise ValueError(f"not an integer constant: {token!r}")


def parse(text: str) -> Header:
    header = Header()
    text = _strip_comments(text)
    body = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped.startswith("#"):
            body.append(line)
            continue
        words = stripped.split(None, 2)
        if words[0] == "#define" and len(words) == 3:
            if "(" in words[1]:
                raise ValueError(f"a function-like macro: {stripped!r}")
            header.defines[words[1]] = _int(words[2], header)
        elif words[0] not in ("#ifndef", "#define", "#endif", "#include"):
            raise ValueError(f"a preprocessor line this reader does not take: {stripped!r}")
    code = " ".join(body)
    pos = 0
    top = re.compile(r"\s*(enum|struct)\s+(\w+)\s*\{")
    while code[pos:].strip():
        match = top.match(code, pos)
        if not match:
            raise ValueError(f"cannot read the header from: {code[pos:pos + 60].strip()!r}")
        end = _closing(code, match.end() - 1)
        inner = code[match.end():end]
        tail = re.match(r"\s*;", code[end + 1:])
        if not tail:
            raise ValueError(f"{match.group(1)} {match.group(2)}: no ';' after its '}}'")
        if match.group(1) == "enum":
            header.enums[match.group(2)] = _enum(inner, header)
        else:
            header.structs[match.group(2)] = _struct(match.group(2), inner, header)
        pos = end + 1 + tail.end()
    return header


def _closing(code: str, start: int) -> int:
    depth = 0
    for i in range(start, len(code)):
        depth += {"{": 1, "}": -1}.get(code[i], 0)
        if depth == 0:
            return i
    raise ValueError("unbalanced braces")


def _enum(inner: str, header: Header) -> dict[str, int]:
    members = {}
    for item in filter(None, (part.strip() for part in inner.split(","))):
        name, eq, value = item.partition("=")
        if not eq or not _IDENT.match(name.strip()):
            raise ValueError(f"enum member without an explicit value: {item!r}")
        members[name.strip()] = _int(value, header)
    return members


def _declarations(inner: str):
    """(type, name, count-expression or None) per declaration; a union is ("union", name,
    its inner text)."""
    pos = 0
    while inner[pos:].strip():
        union = re.match(r"\s*union\s*\{", inner[pos:])
        if union:
            start = pos + union.end() - 1
            end = _closing(inner, start)
            rest = re.match(r"\s*(\w+)\s*;", inner[end + 1:])
            if not rest:
                raise ValueError("an unnamed union")
            yield "union", rest.group(1), inner[start + 1:end]
            pos = end + 1 + rest.end()
            continue
        decl = re.match(r"\s*((?:struct\s+)?\w+)\s+(\w+)\s*(?:\[\s*([^\]]+?)\s*\])?\s*;",
                        inner[pos:])
        if not decl:
            raise ValueError(f"cannot read the declaration {inner[pos:pos + 50].strip()!r}")
        yield re.sub(r"\s+", " ", decl.group(1)), decl.group(2), decl.group(3)
        pos += decl.end()


def _layout(inner: str, header: Header, union: bool) -> tuple[list[Field], int, int]:
    fields, offset, size, align = [], 0, 0, 1
    for ctype, name, extra in _declarations(inner):
        if ctype == "union":
            _members, elem, elem_align = _layout(extra, header, union=True)
            count = 1
        elif ctype.startswith("struct "):
            nested = header.structs.get(ctype[7:])
            if nested is None:
                raise ValueError(f"{ctype} is not declared before its use")
            elem, elem_align = nested.size, nested.align
            count = _int(extra, header) if extra else 1
        elif ctype in SCALARS:
            elem = elem_align = SCALARS[ctype][0]
            count = _int(extra, header) if extra else 1
        else:
            raise ValueError(f"field {name}: type {ctype!r} is not a fixed-width type")
        start = 0 if union else -(-offset // elem_align) * elem_align
        fields.append(Field(name, start, elem * count, ctype, count))
        offset = start + elem * count
        size = max(size, offset)
        align = max(align, elem_align)
    return fields, -(-size // align) * align, align


def _struct(name: str, inner: str, header: Header) -> Struct:
    fields, size, align = _layout(inner, header, union=False)
    return Struct(name, fields, size, align)


def format_items(fmt: str) -> list[tuple[int, int, str]]:
    """(offset, size, code) per item of a little-endian, unaligned struct format: "16s" is
    one item of 16 bytes, "2I" two items."""
    if not fmt.startswith("<"):
        raise ValueError("contract formats are little-endian with no alignment: '<...'")
    items, offset = [], 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt[1:]):
        n = int(count or 1)
        if code == "s":
            items.append((offset, n, "s"))
            offset += n
            continue
        width = {"B": 1, "b": 1, "H": 2, "h": 2, "I": 4, "i": 4, "Q": 8, "q": 8}[code]
        for _ in range(n):
            items.append((offset, width, code))
            offset += width
    return items


def expected_items(struct: Struct) -> list[tuple[int, int, str]]:
    """What a struct format must hold for `struct`: a scalar field as its code, an array,
    a char field, a union or a nested struct as bytes ("Ns")."""
    items = []
    for f in struct.fields:
        scalar = f.count == 1 and f.ctype in SCALARS and f.ctype != "char"
        items.append((f.offset, f.size, SCALARS[f.ctype][1] if scalar else "s"))
    return items
