"""The plugin's own cost per test, in instructions: `python -m benchmarks.plugin_instructions`.

CPU seconds on a shared 2-core VM swing by 10-20% between runs, more than the plugin
costs; instruction counts (valgrind's callgrind, user space) do not. Two suites of tiny
tests that use two function-scoped fixtures run with the plugin off and with it writing
to a pipe; the difference of the differences over the two sizes is the plugin's cost per
test, start-up excluded. No services, no root. Needs valgrind.
"""
from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

TEST_FILE = '''import pytest

@pytest.fixture
def a():
    yield 1

@pytest.fixture
def b(a):
    return a + 1
''' + "".join(f"\ndef test_{i}(b):\n    assert b == 2\n" for i in range(100))


def _instructions(folder: Path, plugin: bool) -> int:
    """Instructions of one pytest run of `folder` under callgrind (every process)."""
    out = folder / "cg"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SVCTRACE_")}
    drain = None
    if plugin:
        fifo = folder / "pipe"
        if not fifo.exists():
            os.mkfifo(fifo, 0o600)
        env.update(SVCTRACE_PIPE=str(fifo), SVCTRACE_BACKEND="ebpf")
        drain = threading.Thread(target=lambda: Path(fifo).read_bytes(), daemon=True)
        drain.start()  # the reader svctrace run would be
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
           sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)]
    if not plugin:
        cmd += ["-p", "no:svctrace"]
    subprocess.run(cmd, env=env, cwd=folder, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=True)
    if drain is not None:
        drain.join(timeout=10)
    total = 0
    for name in glob.glob(f"{out}/cg.*"):
        for line in Path(name).read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total += int(line.split()[1])
                break
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default="1,4", help="two suite sizes, in files of 100 "
                        "tests (default 1,4)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    small, large = (int(n) for n in args.files.split(","))
    with tempfile.TemporaryDirectory(prefix="svctrace-plugin-cost-") as tmp:
        counts = {}
        for files in (small, large):
            folder = Path(tmp) / f"suite{files}"
            folder.mkdir()
            for f in range(files):
                (folder / f"test_f{f}.py").write_text(TEST_FILE)
            counts[files] = (_instructions(folder, False), _instructions(folder, True))
    tests = (large - small) * 100
    plain = (counts[large][0] - counts[small][0]) / tests
    traced = (counts[large][1] - counts[small][1]) / tests
    print(f"per test: pytest {plain / 1e6:.2f}M instructions, with the plugin "
          f"{traced / 1e6:.2f}M: the plugin adds {(traced - plain) / 1e3:.0f}k "
          f"({(traced - plain) / plain:.1%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
