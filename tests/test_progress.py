"""`svctrace run --progress`: the progress line never lands inside pytest's dot line."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.support import e2e

SLOW_SUITE = """
import time, pytest

@pytest.mark.parametrize("i", range(30))
def test_slow(i):
    time.sleep(0.05)
"""


def run(tmp_path, *pytest_args):
    (tmp_path / "test_slow.py").write_text(SLOW_SUITE)
    cmd = e2e.SVCTRACE + ["run", "--backend", "inprocess", "--report", "r.json",
                          "--progress", "0.3", "--", sys.executable, "-m", "pytest", "-q",
                          "-p", "no:cacheprovider", *pytest_args]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env=e2e.child_env({}), stdin=subprocess.DEVNULL)


def test_progress_is_printed_by_pytests_terminal_writer_on_its_own_line(tmp_path):
    proc = run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    progress = [l for l in lines if " so far, " in l]
    assert progress, proc.stdout  # 1.5 s of tests, a line every 0.3 s
    assert all(re.fullmatch(r"svctrace: \d+ tests? so far, \d+ events?, \d+ lost", l)
               for l in progress), progress
    # the plugin took every line once pytest had started (before its first marker arrives,
    # the runner cannot know a plugin will take them, and prints them itself)
    assert all(l.startswith("svctrace: 0 tests so far") for l in proc.stderr.splitlines()
               if " so far, " in l), proc.stderr
    # the dots go on after it, and add up to every test
    assert sum(l.count(".") for l in lines if re.fullmatch(r"(test_slow\.py )?\.+.*", l)
               and "svctrace" not in l) >= 30


def test_without_the_plugin_the_runner_prints_progress_on_a_line_of_its_own(tmp_path):
    (tmp_path / "test_slow.py").write_text(SLOW_SUITE)
    cmd = e2e.SVCTRACE + ["run", "--backend", "inprocess", "--report", "r.json",
                          "--progress", "0.3", "--", sys.executable, "-m", "pytest", "-q",
                          "-p", "no:cacheprovider", "-p", "no:svctrace"]
    proc = subprocess.run(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=120, env=e2e.child_env({}),
                          stdin=subprocess.DEVNULL)
    progress = [l for l in proc.stdout.splitlines() if " so far, " in l]
    assert progress, proc.stdout
    assert all(l.startswith("svctrace: 0 tests so far") for l in progress), progress
