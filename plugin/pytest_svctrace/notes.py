"""Degraded tracing, said once: counted notes for the terminal and the report, never warnings.

A warning raised inside a hook becomes an error under `-W error` and would fail the user's
run; a note is one line at the end instead.
"""
from __future__ import annotations


class Notes:
    """Problems keyed by kind: the first text of each kind and how often it happened."""

    def __init__(self) -> None:
        self._first: dict[str, str] = {}
        self._count: dict[str, int] = {}

    def add(self, kind: str, text: str, count: int = 1) -> None:
        self._first.setdefault(kind, text)
        self._count[kind] = self._count.get(kind, 0) + count

    def export(self) -> list[list]:
        """As plain lists, for an xdist worker's workeroutput."""
        return [[kind, text, self._count[kind]] for kind, text in self._first.items()]

    def merge(self, exported) -> None:
        for kind, text, count in exported or ():
            self.add(kind, text, count)

    def lines(self) -> list[str]:
        return [f"{text} ({f'first of {self._count[kind]}; ' if self._count[kind] > 1 else ''}"
                "tracing is incomplete)" for kind, text in self._first.items()]
