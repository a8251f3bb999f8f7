"""A checkout shared by several users: after root ran setup.sh's install step in it, another
user's `pip install .` from it works (setuptools' root-owned svctrace.egg-info broke it)."""
from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _other_user() -> str | None:
    for name in ("nobody", "daemon"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def _install_step() -> str:
    """setup.sh's own install command and what follows it up to the next step, as the
    script runs them (so this test runs what a user runs, not a copy of it)."""
    text = (REPO / "scripts" / "setup.sh").read_text()
    found = re.search(r"^PIP_ROOT_USER_ACTION=.*?(?=^# -{10,})", text, re.S | re.M)
    assert found, "setup.sh's install step moved: update this test"
    step = found.group(0).split("\n# svctrace finds the distribution's bcc")[0]
    # into this test's venv, without the test extras (no downloads of client libraries)
    return step.replace("-e '.[test]'", "--no-deps -e .")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the first user is root")
@pytest.mark.skipif(_other_user() is None, reason="no unprivileged account (nobody) here")
def test_another_user_installs_from_a_checkout_root_set_up():
    # pytest's tmp_path is root's alone (0700): the other user could not even enter it
    base = Path(tempfile.mkdtemp(prefix="svctrace-shared-"))
    try:
        _two_users_install(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _two_users_install(tmp_path: Path) -> None:
    shared = tmp_path / "checkout"
    shared.mkdir()
    for name in ("tracer", "plugin", "bpf"):
        shutil.copytree(REPO / name, shared / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, shared / name)
    # root: setup.sh's step, in a venv of its own (it reaches the venv as .venv/bin/python)
    subprocess.run([sys.executable, "-m", "venv", str(shared / ".venv")], check=True)
    setup = subprocess.run(["bash", "-euc", _install_step()], cwd=shared,
                           capture_output=True, text=True, timeout=600)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    assert not (shared / "svctrace.egg-info").exists()
    # the checkout is the group's: anyone may write in it, as a shared checkout allows
    for path in [shared, *shared.rglob("*")]:
        if ".venv" not in path.parts and not path.is_symlink():
            path.chmod(0o777 if path.is_dir() else 0o666)
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o777)
    tmp_path.chmod(0o755)
    user = _other_user()
    # the system's interpreter: this venv's and root's pyenv are not the other user's
    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    assert python, "no system python3 for the other user"
    script = (f"cd {shared} && {python} -m venv {home}/venv && "
              f"{home}/venv/bin/python -m pip install -q --disable-pip-version-check "
              f"--no-deps . && {home}/venv/bin/python -c 'import svctrace, pytest_svctrace'")
    second = subprocess.run(["su", user, "-s", "/bin/sh", "-c", script], capture_output=True,
                            text=True, timeout=600, env={**os.environ, "HOME": str(home)})
    assert second.returncode == 0, second.stdout + second.stderr
