"""The plugin's place on the command's PYTHONPATH: links to svctrace's own files where the
kernel allows them (never handed to the user), copies elsewhere."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

import svctrace.events
from svctrace.run import pluginpath

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to nobody")


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_linked_sources_stay_svctraces_and_folders_become_the_users(tmp_path):
    root = Path(pluginpath.build(str(tmp_path), NOBODY, NOBODY))
    events = root / "svctrace" / "events.py"
    installed = Path(svctrace.events.__file__)
    assert os.path.samefile(events, installed)  # a link, not a copy
    assert events.stat().st_uid == installed.stat().st_uid != NOBODY  # not handed over
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            assert path.stat().st_uid == NOBODY, path  # their interpreter may cache there
    assert (root / f"{pluginpath.BOOT_MODULE}.py").stat().st_uid == NOBODY
    assert not (root / "svctrace" / "bpf").exists()


def test_the_linked_bytecode_is_used_as_it_is(tmp_path):
    root = Path(pluginpath.build(str(tmp_path)))
    cached = root / "svctrace" / "__pycache__" / Path(svctrace.events.__cached__).name
    assert os.path.samefile(cached, svctrace.events.__cached__)
    before = cached.stat().st_ino
    done = subprocess.run([sys.executable, "-c", "import svctrace.events as e; print(e.__file__)"],
                          env={**os.environ, "PYTHONPATH": str(root)}, cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(root / "svctrace" / "events.py")
    assert cached.stat().st_ino == before  # not compiled again and rewritten


def test_where_links_fail_the_sources_are_copied_and_owned_by_the_user(tmp_path, monkeypatch):
    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
    monkeypatch.setattr(pluginpath.os, "link", cross_device)
    root = Path(pluginpath.build(str(tmp_path), NOBODY, NOBODY))
    events = root / "svctrace" / "events.py"
    assert not os.path.samefile(events, svctrace.events.__file__)
    assert events.read_bytes() == Path(svctrace.events.__file__).read_bytes()
    assert all(p.stat().st_uid == NOBODY for p in _files(root))
    assert not list(root.rglob("*.pyc"))  # copies of the sources alone, as before
