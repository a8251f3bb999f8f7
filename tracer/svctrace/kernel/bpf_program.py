"""One way to get a BPF program of bpf/ into the kernel: the image kept this boot, else
bcc's compile (kept for the next run). The tracer (capture.ebpf) and the guard
(guard.kernel) both load through here, so both are kept compiled for the boot."""
from __future__ import annotations

import importlib.resources
import os
import re
import tempfile
from contextlib import ExitStack

from svctrace.kernel import boot_cache, bpf_image
from svctrace.kernel.bcc_import import load_bcc
from svctrace.kernel.bpf_image import ImageError, LoadedProgram

_INCLUDE = re.compile(rb'^#include "([^"/]+)"', re.M)  # bpf/'s own, not the kernel's <...>
KEEP = 16  # compiled images kept per program (~40 KB each)


def local_headers(files, text: bytes) -> list[str]:
    """The headers of bpf/ a source includes (`#include "x.h"`), theirs after them, each
    once: all of them are part of what the kept image was compiled from."""
    found: list[str] = []
    todo = [text]
    while todo:
        for name in _INCLUDE.findall(todo.pop()):
            name = name.decode()
            if name not in found:
                found.append(name)
                todo.append((files / name).read_bytes())
    return found


def load(source: str, defines: list[str], prefix: str,
         kinds: dict[str, tuple[int, int]] | None = None,
         optional: frozenset[str] = frozenset()) -> tuple[LoadedProgram, str]:
    """Load bpf/<source> and say how: "compiled" (by bcc, then kept until reboot as
    <prefix><key>.json), "kept" (compiled earlier this boot), or why the kept one was
    refused and compiled again. kinds/optional: see LoadedProgram. ImageError says why
    nothing loaded (clang's first errors or the verifier's verdict)."""
    bcc = load_bcc()
    lib = bpf_image.libbcc(bcc.libbcc.lib._name)
    files = importlib.resources.files("svctrace.bpf")
    text = (files / source).read_bytes()
    header = b"".join((files / name).read_bytes() for name in local_headers(files, text))
    name = f"{prefix}{bpf_image.image_key(text, header, defines, bcc.__version__)}.json"
    decode_type = bcc.BPF._decode_table_type
    raw = boot_cache.read(name)
    origin = "compiled"
    if raw is not None:
        try:
            return LoadedProgram(lib, decode_type, bpf_image.Image.from_bytes(raw), kinds,
                                 optional), "kept"
        except ImageError as exc:
            origin = f"the program kept in {boot_cache.DIR} did not load ({exc}): compiled again"
    with ExitStack() as stack:
        path = stack.enter_context(importlib.resources.as_file(files / source))
        stderr = _CapturedStderr()
        try:
            with stderr:  # -I: the headers next to it
                image = bpf_image.compile_image(lib, text, [*defines, f"-I{path.parent}"])
                program = LoadedProgram(lib, decode_type, image, kinds, optional)
        except ImageError as exc:
            raise ImageError("\n".join(first_errors(stderr.text) + [str(exc)])) from exc
    boot_cache.write(name, image.to_bytes())
    boot_cache.prune(prefix, KEEP)
    return program, origin


def first_errors(log: str, limit: int = 5) -> list[str]:
    """clang's first `error:` lines, else the verifier's verdict (the line before its
    `processed N insns` summary)."""
    lines = log.splitlines()
    errors = [line for line in lines if "error:" in line]
    if errors:
        return errors[:limit]
    return [lines[i - 1] for i, line in enumerate(lines) if line.startswith("processed ")
            and i > 0][:limit]


class _CapturedStderr:
    """Capture fd 2 around a bcc compile: clang writes its diagnostics there, not Python."""

    def __enter__(self) -> None:
        self._file = tempfile.TemporaryFile()
        self._saved = os.dup(2)
        os.dup2(self._file.fileno(), 2)
        self.text = ""

    def __exit__(self, *exc) -> None:
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()
