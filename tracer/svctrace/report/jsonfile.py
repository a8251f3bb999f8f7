"""Versioned JSON files (reports, plans): read with a schema check, write atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from svctrace.errors import SvctraceError
from svctrace.report.model import check_schema
from svctrace.userfiles import UserFileError, read_file, write_file


def read_versioned(path: str | os.PathLike, schema: str, kind: str,
                   error: type[SvctraceError], hint: str = "") -> dict:
    """Load a JSON object whose "schema" must equal `schema`; a mismatch is a hard, clear
    error (coverage.py's rule for its data files)."""
    try:
        data = json.loads(read_file(path))  # under sudo as the user, like every output
    except UserFileError as exc:
        raise error(f"cannot read {kind} {path}: {exc.reason}") from None
    except ValueError as exc:
        raise error(f"{kind} {path} is not valid JSON: {exc}") from None
    return check_schema(data, schema, f"{kind} {path}", error, hint)


def write_atomic(text: str, path: str | os.PathLike, mode: int = 0o644) -> Path:
    """Write so that a reader never sees half a file and a crash never leaves one; under
    sudo with the invoking user's permissions (see userfiles)."""
    return write_file(path, text.encode(), mode)
