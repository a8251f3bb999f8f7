"""Simulated sudo for tests run as root: the environment sudo sets, and folders for `nobody`."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

NOBODY = 65534
# What sudo puts in the environment when the user `nobody` runs `sudo svctrace ...`.
SUDO_ENV = {"SUDO_UID": str(NOBODY), "SUDO_GID": str(NOBODY), "SUDO_USER": "nobody"}


@pytest.fixture
def sudo_dirs():
    """`base` (root's, 0755) holding `home` (nobody's) and `tmp` (TMPDIR of the run). Not
    under pytest's tmp_path: /tmp/pytest-of-root is 0700, so nobody could reach nothing."""
    base = Path(tempfile.mkdtemp(prefix="svctrace-test-"))
    os.chmod(base, 0o755)
    (base / "home").mkdir()
    os.chown(base / "home", NOBODY, NOBODY)
    (base / "tmp").mkdir(mode=0o755)
    yield base
    shutil.rmtree(base)
