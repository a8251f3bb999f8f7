"""Make the marker plugin load in every pytest the command runs, installed there or not.

svctrace often lives in a venv of its own (pipx) while the suite's pytest runs from
another (tox, nox, the project's .venv), possibly on another Python. `svctrace run` links
(or copies) the plugin and the pure modules it imports into the run's private folder, puts that on
PYTHONPATH and names a small boot plugin in PYTEST_PLUGINS. The boot plugin loads the
marker plugin unless pytest already has it (installed: its entry point loaded it first)
or the user blocked it (`-p no:svctrace`); an interpreter that cannot import it gets one
warning and runs untraced instead of failing.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

BOOT_MODULE = "svctrace_boot"
PLUGIN_MODULE = "pytest_svctrace.plugin"
ENTRY_POINT_NAME = "svctrace"  # [project.entry-points.pytest11] in pyproject.toml

_BOOT_SOURCE = f'''"""Loads svctrace's marker plugin (put here by `svctrace run`; see svctrace.run.pluginpath)."""
import sys

PLUGIN = {PLUGIN_MODULE!r}


def pytest_addhooks(pluginmanager):
    if pluginmanager.is_blocked({ENTRY_POINT_NAME!r}) or pluginmanager.is_blocked(PLUGIN):
        return
    if any(getattr(p, "__name__", None) == PLUGIN for p in pluginmanager.get_plugins()):
        return  # installed in this environment: its entry point registered it already
    try:
        pluginmanager.import_plugin(PLUGIN)
    except Exception as exc:  # never break the user's run over tracing
        sys.stderr.write(
            "svctrace: WARNING: the pytest of %s (Python %d.%d) cannot load the svctrace "
            "plugin (%s: %s); its tests are not traced. svctrace needs Python 3.10 or newer "
            "in the tested environment.\\n"
            % (sys.executable, sys.version_info[0], sys.version_info[1],
               type(exc).__name__, exc))
'''


def _package_dir(module_name: str) -> Path:
    module = __import__(module_name)
    return Path(module.__file__).resolve().parent


def _compiled(src: Path) -> dict[str, list[Path]]:
    """module name -> its bytecode files in src/__pycache__ (one per Python version)."""
    found: dict[str, list[Path]] = {}
    try:
        entries = list((src / "__pycache__").iterdir())
    except OSError:
        return found
    for entry in entries:
        if entry.suffix == ".pyc":
            found.setdefault(entry.name.split(".", 1)[0], []).append(entry)
    return found


def _place_sources(src: Path, dst: Path, link: bool, made: list[Path]) -> bool:
    """The package's .py files (not its BPF sources or caches), recursively. Hard links
    where `link` and the kernel allow them, with the bytecode beside them (a link keeps
    the source's mtime, so a pytest on the same Python imports them without compiling),
    else copies of the sources alone. Folders and copies go to `made`; True while
    linking worked."""
    dst.mkdir(mode=0o755)
    made.append(dst)
    compiled = _compiled(src) if link else {}
    for entry in sorted(src.iterdir()):
        if entry.is_dir() and (entry / "__init__.py").is_file() and entry.name != "bpf":
            link = _place_sources(entry, dst / entry.name, link, made)
        elif entry.suffix == ".py":
            if link:
                try:
                    os.link(entry, dst / entry.name)
                except OSError:  # another file system, or fs.protected_hardlinks
                    link = False
                else:
                    for pyc in compiled.get(entry.stem, ()):
                        if not (dst / "__pycache__").is_dir():
                            (dst / "__pycache__").mkdir(mode=0o755)
                            made.append(dst / "__pycache__")
                        os.link(pyc, dst / "__pycache__" / pyc.name)
                    continue
            shutil.copyfile(entry, dst / entry.name)
            made.append(dst / entry.name)
    return link


def build(private_dir: str, uid: int | None = None, gid: int | None = None) -> str:
    """Lay out <private_dir>/python (boot plugin + svctrace and pytest_svctrace) and
    return it. Links or copies, not the install's folders on the path: the user the
    command runs as may not be able to reach svctrace's own install (a root-owned pipx
    venv), and a link reads as its file whatever folders hold the original."""
    root = Path(private_dir) / "python"
    root.mkdir(mode=0o755)
    made = [root, root / f"{BOOT_MODULE}.py"]
    (root / f"{BOOT_MODULE}.py").write_text(_BOOT_SOURCE)
    linked = _place_sources(_package_dir("svctrace"), root / "svctrace", True, made)
    _place_sources(_package_dir("pytest_svctrace"), root / "pytest_svctrace", linked, made)
    if uid is not None:  # theirs, so their interpreter may cache bytecode there
        # Never a link: its owner is the installed file's, and chowning it would hand the
        # user svctrace's own code.
        for path in made:
            os.chown(path, uid, gid if gid is not None else -1, follow_symlinks=False)
    return str(root)


def environment(env: dict[str, str], path: str) -> dict[str, str]:
    """env with `path` first on PYTHONPATH and the boot plugin added to PYTEST_PLUGINS."""
    env = dict(env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
    plugins = [p for p in env.get("PYTEST_PLUGINS", "").split(",") if p.strip()]
    if BOOT_MODULE not in plugins:
        plugins.append(BOOT_MODULE)
    env["PYTEST_PLUGINS"] = ",".join(plugins)
    return env
