"""Import bcc's Python package from the distribution when this interpreter cannot find it.

bcc's Python package is pure Python over libbcc.so and ships only with the distribution
(Debian/Ubuntu: python3-bpfcc in /usr/lib/python3/dist-packages; Fedora/RHEL:
python3-bcc in /usr/lib/python3.X/site-packages). PyPI's `bcc` is an unrelated project.
svctrace often runs from a venv of its own (pipx, tox) on another Python: there, only
the `bcc` package itself is loaded from the system directory, never the rest of that
directory, whose compiled modules belong to the system Python.
"""
from __future__ import annotations

import glob
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

# Where distributions install python3-bpfcc / python3-bcc, most specific first.
SYSTEM_DIRS = ("/usr/lib/python3/dist-packages", "/usr/lib/python3.*/site-packages",
               "/usr/lib64/python3.*/site-packages", "/usr/lib/python3.*/dist-packages",
               "/usr/local/lib/python3*/dist-packages", "/usr/share/bcc/python")


def system_bcc_dirs() -> list[Path]:
    """Directories holding a distribution's `bcc` package (bcc/__init__.py), in order."""
    found = []
    for pattern in SYSTEM_DIRS:
        for directory in sorted(glob.glob(pattern), reverse=True):
            if (Path(directory) / "bcc" / "__init__.py").is_file():
                found.append(Path(directory))
    return found


def _is_bpfcc(module: ModuleType) -> bool:
    """The real bcc (BPF compiler collection), not PyPI's unrelated `bcc`."""
    return hasattr(module, "BPF")


def load_bcc() -> ModuleType:
    """The bcc module: this interpreter's own if it has one, else the distribution's.
    Raises ImportError (or OSError from a missing libbcc.so) saying where it looked."""
    existing = sys.modules.get("bcc")
    if existing is not None and _is_bpfcc(existing):
        return existing
    first_error: Exception | None = None
    try:
        module = importlib.import_module("bcc")
        if _is_bpfcc(module):
            return module
        first_error = ImportError(f"the 'bcc' importable here ({module.__file__}) is not "
                                  "the BPF compiler collection (PyPI's bcc is unrelated)")
    except ImportError as exc:
        first_error = exc
    for directory in system_bcc_dirs():
        module = _load_from(directory)
        if module is not None:
            return module
    raise ImportError(f"{first_error}; and no distribution bcc package was found in "
                      f"{', '.join(SYSTEM_DIRS)}")


def _load_from(directory: Path) -> ModuleType | None:
    """Import `bcc` (and its submodules) from directory alone, not the whole directory."""
    for name in [m for m in sys.modules if m == "bcc" or m.startswith("bcc.")]:
        del sys.modules[name]  # a failed or foreign import must not shadow this one
    package = directory / "bcc"
    spec = importlib.util.spec_from_file_location(
        "bcc", package / "__init__.py", submodule_search_locations=[str(package)])
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        for name in [m for m in sys.modules if m == "bcc" or m.startswith("bcc.")]:
            del sys.modules[name]
        raise
    return module
