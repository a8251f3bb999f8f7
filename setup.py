"""Build hooks: a wheel or sdist built from a git checkout records its commit (svctrace --version)."""
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
# Package data of svctrace; absent from the source tree (an sdist carries it, see below).
COMMIT_FILE = Path("svctrace", "COMMIT")


def checkout_commit() -> str | None:
    """The commit of the checkout being built (with -dirty for uncommitted changes), or None
    outside a git checkout (an unpacked sdist: its COMMIT file is used instead)."""
    if not (HERE / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(HERE), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("-dirty" if dirty else "")


class BuildPy(build_py):
    """Writes svctrace/COMMIT into the built package when building from a checkout."""

    def run(self):
        super().run()
        commit = checkout_commit()
        if commit:
            target = Path(self.build_lib, COMMIT_FILE)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(commit + "\n")


class Sdist(sdist):
    """Writes tracer/svctrace/COMMIT into the sdist, so a wheel built from it knows its commit."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        commit = checkout_commit()
        if commit:
            target = Path(base_dir, "tracer", COMMIT_FILE)
            if target.is_symlink() or target.exists():
                target.unlink()   # a hard link to the source tree's file: never write through it
            target.write_text(commit + "\n")


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
