"""Line protocol of the marker pipe: records as short JSON arrays of at most PIPE_BUF bytes (pure).

Writes of at most PIPE_BUF (4096) bytes to a pipe are atomic, so every process of the run
(main pytest, xdist workers) can share one pipe. A record whose line would be longer (a
huge nodeid, a test with hundreds of fixtures) is split into "chunk" lines that carry a
per-process id; the reader reassembles them. Lines of one process arrive in order.

A line is RS (0x1e), then a JSON array: the record's tag, then its fields in declaration
order. Arrays, not objects: the plugin writes ~5 records per test (a TestInfo, four
PhaseEdges) and the runner reads them all, so both ends' cost matters. The RS prefix is
what the eBPF program looks for to recognise a marker write (bpf/svctrace.bpf.c
bump_epoch).
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import fields
from operator import attrgetter
from typing import Iterator

from svctrace.events import (Destination, Event, FixtureMarker, FixtureWindows, Lookup,
                             Marker, PhaseEdge, ProcessEvent, Stack, TestInfo)

PIPE_BUF = 4096
_TAGS = {Marker: "m", FixtureMarker: "f", TestInfo: "t", Event: "e", ProcessEvent: "p",
         Stack: "s", FixtureWindows: "w", Lookup: "l", PhaseEdge: "x"}
_TYPES = {tag: cls for cls, tag in _TAGS.items()}
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (*_TAGS, Destination)}
_TUPLES = {cls: tuple(i for i, name in enumerate(_FIELDS[cls])
                      if name in ("fixtures", "markers", "bases", "cmdline", "threads",
                                  "unseen", "addresses"))
            for cls in _TAGS}
_DEST_INDEX = _FIELDS[Event].index("dest")
_LOOKUP_SERVER = _FIELDS[Lookup].index("server")
_LOOKUP_PAYLOAD = _FIELDS[Lookup].index("payload")
_FIRST_INDEX = _FIELDS[Event].index("first_bytes")  # bytes: base64 text on the wire
_CHUNK_DATA = 2900  # raw bytes per chunk: base64 makes 3868, plus the envelope < PIPE_BUF
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
# json's C scanner itself: json.loads adds two whitespace regex matches per line
_scan = json.JSONDecoder().scan_once


class ProtocolError(ValueError):
    """A line on the marker pipe is not a record svctrace wrote."""


# (tag, getter of all fields in order) per type: one C call per record, not a generator
# over getattr (records the plugin writes inside the user's tests)
_GETTERS = {cls: ((tag,), attrgetter(*_FIELDS[cls])) for cls, tag in _TAGS.items()}


def _values(record) -> list:
    tag, getter = _GETTERS[type(record)]
    values = [*tag, *getter(record)]
    if type(record) is Event:
        dest = record.dest
        values[_DEST_INDEX + 1] = [dest.family, dest.transport, dest.address, dest.port]
        if record.first_bytes is not None:
            values[_FIRST_INDEX + 1] = base64.b64encode(record.first_bytes).decode()
    elif type(record) is Lookup:  # in-process getaddrinfo: a name and addresses, no bytes
        values[_LOOKUP_SERVER + 1], values[_LOOKUP_PAYLOAD + 1] = None, ""
    return values


def encode(record, chunk_id: str = "") -> list[bytes]:
    """Lines (each ending in a newline, each <= PIPE_BUF bytes) that carry one record.

    chunk_id must be unique per writing process (e.g. "<pid>-<counter>")."""
    data = f"\x1e{_dumps(_values(record))}\n".encode()
    if len(data) <= PIPE_BUF:
        return [data]
    body = data[1:-1]
    pieces = [base64.b64encode(body[i:i + _CHUNK_DATA]).decode()
              for i in range(0, len(body), _CHUNK_DATA)]
    out = []
    for index, piece in enumerate(pieces):
        chunk = ["c", chunk_id or f"{os.getpid()}", index, len(pieces), piece]
        encoded = b"\x1e" + _dumps(chunk).encode() + b"\n"
        assert len(encoded) <= PIPE_BUF, "chunk envelope too large"
        out.append(encoded)
    return out


def loads_value(text: str):
    """One JSON value (the plugin's rare way back from a line's piece to a record)."""
    return json.loads(text)


def json_text(value) -> str:
    """One value as the wire's JSON (callers cache it for strings they repeat: node ids,
    fixture ids)."""
    return _dumps(value)


def _number(value) -> str:
    return "null" if value is None else repr(value)


def _name(value: str | None) -> str:
    return "null" if value is None else f'"{value}"'


# The plugin's hot path: a phase edge per line, built without a record
# object (the same bytes encode() makes of a Marker: tests hold them equal).
# Strings passed as *_json are json_text() results; the others are plain names.
def marker_line(mono_ns: int, wall_ns: int, pid: int, worker_json: str, nodeid_json: str,
                phase: str, edge: str, outcome: str | None = None,
                duration_s: float | None = None) -> bytes | None:
    """A Marker's line, or None when it would exceed PIPE_BUF (use encode(): chunks)."""
    out = (f'\x1e["m",{mono_ns},{wall_ns},{pid},{worker_json},{nodeid_json},"{phase}",'
           f'"{edge}",{_name(outcome)},{_number(duration_s)}]\n').encode()
    return out if len(out) <= PIPE_BUF else None


_NAMES = {name: f'"{name}"' for name in ("setup", "call", "teardown", "passed", "failed",
                                         "skipped", "xfailed", "xpassed", "interrupted")}
_NAMES[None] = "null"


def edge_prefix(pid: int, worker_json: str, nodeid_json: str) -> str:
    """The part of a test's PhaseEdge lines that is the same for all of them (see
    edge_line)."""
    return f'\x1e["x",{pid},{worker_json},{nodeid_json},'


def edge_line(prefix: str, mono_ns: int, wall_ns: int, started: str | None,
              ended: str | None = None, outcome: str | None = None,
              duration_s: float | None = None, windows_json: str = "",
              end_mono_ns: int | None = None, end_wall_ns: int | None = None) -> bytes | None:
    """A PhaseEdge's line from edge_prefix() and its windows already as JSON arrays joined
    by commas (the same bytes encode() makes), or None when it would exceed PIPE_BUF."""
    names = _NAMES  # lookups, not calls: the plugin writes four of these a test
    out = (f'{prefix}{mono_ns},{wall_ns},{names[started]},{names[ended]},'
           f'{names.get(outcome) or _name(outcome)},'
           f'{"null" if duration_s is None else repr(duration_s)},[{windows_json}],'
           f'{"null" if end_mono_ns is None else end_mono_ns},'
           f'{"null" if end_wall_ns is None else end_wall_ns}]\n').encode()
    return out if len(out) <= PIPE_BUF else None


def _record(values: list):
    cls = _TYPES.get(values[0])
    if cls is None:
        raise ProtocolError(f"unknown record type {values[0]!r}")
    args = values[1:]
    if cls is Event:
        args[_DEST_INDEX] = Destination(*args[_DEST_INDEX])
        if len(args) > _FIRST_INDEX and args[_FIRST_INDEX] is not None:
            try:
                args[_FIRST_INDEX] = base64.b64decode(args[_FIRST_INDEX], validate=True)
            except (TypeError, ValueError):
                raise ProtocolError("an event's first bytes are not base64") from None
    elif cls is PhaseEdge:
        if len(args) > 9 and args[9]:
            args[9] = tuple(map(tuple, args[9]))
        elif len(args) > 9:
            args[9] = ()
    elif cls is FixtureWindows:
        args[2] = tuple(map(tuple, args[2]))
    elif cls is Lookup:
        args[_LOOKUP_SERVER], args[_LOOKUP_PAYLOAD] = None, b""
    for index in _TUPLES[cls]:
        args[index] = tuple(args[index])
    return cls(*args)


def _loads(text: str) -> list:
    """One JSON array that fills the whole text (json.loads' rule, without its regexes)."""
    text = text.rstrip()
    values, end = _scan(text, 0)  # StopIteration: not JSON at all
    if end != len(text) or type(values) is not list:
        raise ProtocolError("not one JSON array")
    return values


def _scan_lines(body: bytes) -> list | None:
    """The values of many lines (RS, one JSON value, RS, ...) in one call of json's C
    scanner, or None unless every line is one RS and one JSON value: the runner reads ~5
    lines a test, and a call per line cost it more than the scanning. RS and
    newlines never occur inside a value: the encoder escapes both."""
    lines = body.count(b"\n") + 1
    if body[:1] != b"\x1e" or body.count(b"\n\x1e") != lines - 1 \
            or body.count(b"\x1e") != lines:
        return None
    try:
        text = body[1:].replace(b"\n\x1e", b",").decode()
        values, end = _scan(f"[{text}]", 0)
    except (ValueError, StopIteration):
        return None
    # a line "[1],[2" would pass as two values: the count tells them apart from lines
    return values if end == len(text) + 2 and len(values) == lines else None


def info_line(nodeid_json: str, fixtures_json: str, markers_json: str, path_json: str,
              bases_json: str, worker_json: str) -> bytes | None:
    """A TestInfo's line at collection (no unseen clients) from its fields as JSON (see
    marker_line)."""
    out = (f'\x1e["t",{nodeid_json},{fixtures_json},{markers_json},{path_json},{bases_json},'
           f'{worker_json},[]]\n').encode()
    return out if len(out) <= PIPE_BUF else None


def windows_line(pid: int, when: str, windows_json: list[str]) -> bytes | None:
    """A FixtureWindows line from its windows already as JSON arrays (see marker_line)."""
    out = f'\x1e["w",{pid},"{when}",[{",".join(windows_json)}]]\n'.encode()
    return out if len(out) <= PIPE_BUF else None


def record_of(line: bytes):
    """The record of one whole line that marker_line() or windows_line() built."""
    return _record(_loads(line[1:].decode()))


class Decoder:
    """Turns pipe bytes back into records, reassembling chunked ones."""

    def __init__(self) -> None:
        self._partial = b""
        self._chunks: dict[str, list] = {}
        self.bad_lines = 0

    def feed(self, data: bytes) -> Iterator:
        self._partial += data
        body, newline, rest = self._partial.rpartition(b"\n")
        if not newline:
            return
        self._partial = rest
        values = _scan_lines(body)
        if values is None:  # not all well-formed: line by line, counting the bad ones
            for raw in body.split(b"\n"):
                if raw.strip():
                    record = self._line(raw)
                    if record is not None:
                        yield record
            return
        for value in values:
            record = self._values(value)
            if record is not None:
                yield record

    def _values(self, values):
        """The record one decoded line completes (see _line)."""
        try:
            if type(values) is not list:
                raise ProtocolError("not one JSON array")
            if values[0] == "c":
                whole = self._chunk(values)
                if whole is None:
                    return None
                values = _loads(whole)
            return _record(values)
        except (ValueError, TypeError, KeyError, IndexError, StopIteration):
            self.bad_lines += 1
            return None

    def _line(self, raw: bytes):
        """The record a line completes, or None (a chunk of one still incomplete, or a bad
        line, counted)."""
        try:
            if raw[:1] != b"\x1e":
                raise ProtocolError("not a svctrace record")
            values = _loads(raw[1:].decode())  # str: skips json's encoding detection
        except (ValueError, TypeError, StopIteration):
            self.bad_lines += 1
            return None
        return self._values(values)

    def _chunk(self, values: list) -> str | None:
        _, chunk_id, index, count, data = values
        parts = self._chunks.setdefault(chunk_id, [None] * count)
        parts[index] = data
        if any(part is None for part in parts):
            return None
        del self._chunks[chunk_id]
        return b"".join(base64.b64decode(part) for part in parts).decode()

    def incomplete(self) -> int:
        """Chunked records that never completed (a writer died mid-record)."""
        return len(self._chunks) + (1 if self._partial.strip() else 0)
