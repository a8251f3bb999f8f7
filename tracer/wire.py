"""Line protocol of the marker pipe: records as JSON lines of at most PIPE_BUF bytes (pure).

Writes of at most PIPE_BUF (4096) bytes to a pipe are atomic, so every process of the run
(main pytest, xdist workers) can share one pipe. A record whose line would be longer (a
huge nodeid, a test with hundreds of fixtures) is split into "chunk" lines that carry a
per-process id; the reader reassembles them. Lines of one process arrive in order.
"""
from __future__ import annotations

import base64
import json
import os
from dataclasses import fields
from typing import Iterator

from svctrace.events import (Destination, Event, FixtureMarker, Marker, ProcessEvent,
                             TestInfo)

PIPE_BUF = 4096
_TAGS = {Marker: "m", FixtureMarker: "f", TestInfo: "t", Event: "e", ProcessEvent: "p"}
_TYPES = {tag: cls for cls, tag in _TAGS.items()}
_CHUNK_DATA = 2900  # raw bytes per chunk: base64 makes 3868, plus the envelope < PIPE_BUF


class ProtocolError(ValueError):
    """A line on the marker pipe is not a record svctrace wrote."""


_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (*_TAGS, Destination)}


def _to_dict(record) -> dict:
    # "_" first: every line starts with {"_":" which the eBPF program recognises as a
    # marker write (bpf/svctrace.bpf.c bump_epoch). Not dataclasses.asdict: its deep copy
    # cost most of the plugin's time per marker.
    data = {"_": _TAGS[type(record)]}
    for name in _FIELDS[type(record)]:
        data[name] = getattr(record, name)
    if type(record) is Event:
        dest = record.dest
        data["dest"] = {name: getattr(dest, name) for name in _FIELDS[Destination]}
    return data


def encode(record, chunk_id: str = "") -> list[bytes]:
    """Lines (each ending in a newline, each <= PIPE_BUF bytes) that carry one record.

    chunk_id must be unique per writing process (e.g. "<pid>-<counter>")."""
    line = json.dumps(_to_dict(record), separators=(",", ":"), ensure_ascii=True) + "\n"
    data = line.encode()
    if len(data) <= PIPE_BUF:
        return [data]
    body = data[:-1]
    pieces = [base64.b64encode(body[i:i + _CHUNK_DATA]).decode()
              for i in range(0, len(body), _CHUNK_DATA)]
    out = []
    for index, piece in enumerate(pieces):
        chunk = {"_": "c", "id": chunk_id or f"{os.getpid()}", "i": index,
                 "n": len(pieces), "d": piece}
        encoded = (json.dumps(chunk, separators=(",", ":"), ensure_ascii=True) + "\n").encode()
        assert len(encoded) <= PIPE_BUF, "chunk envelope too large"
        out.append(encoded)
    return out


def _from_dict(data: dict):
    tag = data.pop("_", None)
    cls = _TYPES.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown record type {tag!r}")
    if cls is Event:
        data["dest"] = Destination(**data["dest"])
    for key in ("fixtures", "markers", "bases", "cmdline"):
        if key in data and isinstance(data[key], list):
            data[key] = tuple(data[key])
    return cls(**data)


class Decoder:
    """Turns pipe bytes back into records, reassembling chunked ones."""

    def __init__(self) -> None:
        self._partial = b""
        self._chunks: dict[str, list] = {}
        self.bad_lines = 0

    def feed(self, data: bytes) -> Iterator:
        self._partial += data
        *lines, self._partial = self._partial.split(b"\n")
        for raw in lines:
            if raw.strip():
                yield from self._line(raw)

    def _line(self, raw: bytes) -> Iterator:
        try:
            data = json.loads(raw.decode())  # str: skips json's encoding detection
            if data.get("_") == "c":
                whole = self._chunk(data)
                if whole is None:
                    return
                data = json.loads(whole)
            yield _from_dict(data)
        except (ValueError, TypeError, KeyError):
            self.bad_lines += 1

    def _chunk(self, data: dict) -> str | None:
        parts = self._chunks.setdefault(data["id"], [None] * data["n"])
        parts[data["i"]] = data["d"]
        if any(part is None for part in parts):
            return None
        del self._chunks[data["id"]]
        return b"".join(base64.b64decode(part) for part in parts).decode()

    def incomplete(self) -> int:
        """Chunked records that never completed (a writer died mid-record)."""
        return len(self._chunks) + (1 if self._partial.strip() else 0)
