"""Counted nouns for messages: "1 test", "2 tests", "1 process" (pure)."""
from __future__ import annotations

_IRREGULAR = {"process": "processes", "was": "were"}


def plural(n: int, word: str) -> str:
    """`word` as `n` of it reads: the plural unless n is 1."""
    if n == 1:
        return word
    return _IRREGULAR.get(word, word + "s")


def counted(n: int, word: str) -> str:
    """'1 test', '3 tests', '0 tests'."""
    return f"{n} {plural(n, word)}"
