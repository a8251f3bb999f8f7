"""A strict DNS message parser: the names and addresses in a reply (pure, never raises)."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TYPE_A, TYPE_CNAME, TYPE_AAAA = 1, 5, 28
CLASS_IN = 1
_MAX_POINTERS = 32  # a compression loop must end: RFC 1035 pointers only point backwards
_MAX_RECORDS = 256  # a reply claiming more is not one a resolver sent to the tree


@dataclass(frozen=True, slots=True)
class Reply:
    """What one DNS response says: the question's name (lower case, no trailing dot), its
    id, the CNAME chain followed from it, and the A/AAAA addresses of the chain's end.
    `truncated` (TC bit) or `partial` (the bytes ended before the counts did): the
    addresses are those read, not necessarily all."""

    qid: int
    question: str
    addresses: tuple[str, ...]
    aliases: tuple[str, ...] = ()   # CNAME targets, in chain order
    truncated: bool = False
    partial: bool = False


class _Bad(Exception):
    """The bytes are not a DNS message as the RFC describes it."""


def _name(data: bytes, offset: int) -> tuple[str, int]:
    """(dotted name, offset after it in place), following compression pointers."""
    labels: list[str] = []
    end = None
    jumps = 0
    total = 0
    while True:
        if offset >= len(data):
            raise _Bad("name runs past the end")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise _Bad("pointer runs past the end")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if end is None:
                end = offset + 2
            jumps += 1
            if jumps > _MAX_POINTERS or target >= offset:
                raise _Bad("compression pointer loops or points forward")
            offset = target
            continue
        if length & 0xC0:
            raise _Bad("reserved label type")
        offset += 1
        if length == 0:
            break
        label = data[offset:offset + length]
        if len(label) != length:
            raise _Bad("label runs past the end")
        total += length + 1
        if total > 255:
            raise _Bad("name longer than 255 bytes")
        try:
            labels.append(label.decode("ascii").lower())
        except UnicodeDecodeError:
            raise _Bad("label is not ASCII") from None
        offset += length
    return ".".join(labels), end if end is not None else offset


def _u16(data: bytes, offset: int) -> int:
    if offset + 2 > len(data):
        raise _Bad("short field")
    return (data[offset] << 8) | data[offset + 1]


def parse_reply(data: bytes) -> Reply | None:
    """The reply in `data` (one DNS message, without TCP's length prefix), or None when it
    is not a well-formed response to exactly one IN question (a query, garbage, an error
    reply with no answer is a Reply with no addresses)."""
    try:
        return _parse(bytes(data))
    except (_Bad, IndexError):
        return None


def _parse(data: bytes) -> Reply | None:
    if len(data) < 12:
        return None
    qid, flags = _u16(data, 0), _u16(data, 2)
    qdcount, ancount = _u16(data, 4), _u16(data, 6)
    if not flags & 0x8000 or (flags >> 11) & 0xF != 0 or qdcount != 1:
        return None  # not a response, not a standard query, or not one question
    if ancount > _MAX_RECORDS:
        return None
    question, offset = _name(data, 12)
    qtype, qclass = _u16(data, offset), _u16(data, offset + 2)
    offset += 4
    if qclass != CLASS_IN or qtype not in (TYPE_A, TYPE_AAAA):
        return None
    truncated = bool(flags & 0x0200)
    records: list[tuple[str, int, object]] = []
    partial = False
    for _ in range(ancount):
        try:
            owner, offset = _name(data, offset)
            rtype, rclass = _u16(data, offset), _u16(data, offset + 2)
            rdlength = _u16(data, offset + 8)
            rdata_at = offset + 10
            if rdata_at + rdlength > len(data):
                raise _Bad("record data runs past the end")
        except _Bad:
            partial = True  # cut at the captured length: keep what was read whole
            break
        offset = rdata_at + rdlength
        if rclass != CLASS_IN:
            continue
        if rtype == TYPE_A and rdlength == 4:
            records.append((owner, rtype, str(ipaddress.IPv4Address(data[rdata_at:offset]))))
        elif rtype == TYPE_AAAA and rdlength == 16:
            records.append((owner, rtype, str(ipaddress.IPv6Address(data[rdata_at:offset]))))
        elif rtype == TYPE_CNAME:
            target, after = _name(data, rdata_at)
            if after != offset:
                raise _Bad("CNAME data length disagrees with its name")
            records.append((owner, rtype, target))
    # Follow the chain from the question: only addresses of the name the chain reaches
    # belong to the question (a reply may carry unrelated records).
    aliases: list[str] = []
    current = question
    for _ in range(len(records) + 1):
        target = next((value for owner, rtype, value in records
                       if rtype == TYPE_CNAME and owner == current), None)
        if target is None or target in aliases or target == question:
            break
        aliases.append(target)
        current = target
    addresses = tuple(dict.fromkeys(value for owner, rtype, value in records
                                    if rtype in (TYPE_A, TYPE_AAAA) and owner == current))
    return Reply(qid, question, addresses, tuple(aliases), truncated, partial)


def split_stream(data: bytes) -> list[bytes]:
    """The messages of a DNS-over-TCP byte stream (each behind a 2-byte length); a last,
    incomplete one is returned as far as it goes (parse_reply marks it partial)."""
    messages = []
    offset = 0
    while offset + 2 <= len(data):
        length = (data[offset] << 8) | data[offset + 1]
        if length < 12:
            break
        messages.append(data[offset + 2:offset + 2 + length])
        offset += 2 + length
    return messages
