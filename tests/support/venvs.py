"""Virtual environments other than the project's: svctrace installed alone (pipx-style),
and the sample suite's own environment on another Python, with no svctrace in it.

They live in <repo>/.venvs (kept between runs: creating them downloads packages). The
svctrace one is refreshed from the working tree on every use, so it tests this code.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".venvs"
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
# What tests/suites/services imports (see pyproject's `test` extra), minus svctrace.
SUITE_PACKAGES = ("pytest", "psycopg2-binary", "psycopg[binary]", "redis", "confluent-kafka",
                  "urllib3")


def other_python(exclude: tuple[int, int] = sys.version_info[:2],
                 prefer: tuple[str, ...] = ("3.12", "3.13", "3.10")) -> str | None:
    """An interpreter of another minor version than `exclude` (pyenv's, else on PATH)."""
    for version in prefer:
        if tuple(map(int, version.split("."))) == tuple(exclude):
            continue
        for candidate in sorted(PYENV.glob(f"{version}.*"), reverse=True):
            python = candidate / "bin" / "python3"
            if python.exists():
                return str(python)
        found = shutil.which(f"python{version}")
        if found and "shims" not in found:
            return found
    return None


def _pip(venv: Path, *args: str) -> None:
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
                    "--disable-pip-version-check", *args], check=True,
                   env={**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}, timeout=900)


def ensure_venv(name: str, python: str, packages: tuple[str, ...]) -> Path:
    """A venv at .venvs/<name> made with `python` holding `packages` (made once)."""
    ROOT.mkdir(exist_ok=True)
    venv = ROOT / name
    with open(ROOT / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers or parallel runs: one builder
        done = venv / ".svctrace-ready"
        # Made again when the wanted packages change (e.g. a newer setuptools floor).
        if not done.exists() or done.read_text() != " ".join(packages):
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([python, "-m", "venv", str(venv)], check=True, timeout=300)
            if packages:
                _pip(venv, *packages)
            done.write_text(" ".join(packages))
    return venv


def suite_venv(python: str) -> Path:
    """The sample suite's environment: pytest and the client libraries, no svctrace."""
    version = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return ensure_venv(f"suite-py{version}", python, SUITE_PACKAGES)


def svctrace_venv() -> Path:
    """svctrace alone in a venv of its own (no test extras, no bcc link), refreshed from
    this working tree: what `pipx install svctrace` gives a user."""
    venv = ensure_venv("svctrace-alone", sys.executable, ("click>=8.0", "psutil>=5.9",
                                                       "pytest>=7.0", "setuptools>=77",
                                                       "wheel"))
    with open(ROOT / "svctrace-alone.lock", "w") as lock, \
            tempfile.TemporaryDirectory() as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # Build from a clean copy: an in-tree build/ may hold modules deleted since.
        source = Path(tmp) / "svctrace"
        source.mkdir()
        for name in ("tracer", "plugin", "bpf"):
            shutil.copytree(REPO / name, source / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "setup.py", "README.md"):
            shutil.copy(REPO / name, source / name)
        _pip(venv, "--no-deps", "--no-build-isolation", "--force-reinstall", str(source))
    return venv
