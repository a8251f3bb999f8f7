"""Make the marker plugin load in every pytest the command runs, installed there or not.

svctrace often lives in a venv of its own (pipx) while the suite's pytest runs from
another (tox, nox, the project's .venv), possibly on another Python. `svctrace run` copies
the plugin and the pure modules it imports into the run's private folder, puts that on
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


def _copy_sources(src: Path, dst: Path) -> None:
    """The package's .py files (not its BPF sources or caches), recursively."""
    dst.mkdir(mode=0o755)
    for entry in sorted(src.iterdir()):
        if entry.is_dir() and (entry / "__init__.py").is_file() and entry.name != "bpf":
            _copy_sources(entry, dst / entry.name)
        elif entry.suffix == ".py":
            shutil.copyfile(entry, dst / entry.name)


def build(private_dir: str, uid: int | None = None, gid: int | None = None) -> str:
    """Lay out <private_dir>/python (boot plugin + copies of svctrace and pytest_svctrace)
    and return it. Copies, not links: the user the command runs as may not be able to read
    svctrace's own install (a root-owned pipx venv)."""
    root = Path(private_dir) / "python"
    root.mkdir(mode=0o755)
    _copy_sources(_package_dir("svctrace"), root / "svctrace")
    _copy_sources(_package_dir("pytest_svctrace"), root / "pytest_svctrace")
    (root / f"{BOOT_MODULE}.py").write_text(_BOOT_SOURCE)
    if uid is not None:  # theirs, so their interpreter may cache bytecode there
        for path in [root, *root.rglob("*")]:
            os.chown(path, uid, gid if gid is not None else -1)
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
