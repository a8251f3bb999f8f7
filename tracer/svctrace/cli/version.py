"""The version `svctrace --version` prints: the package's, with the git commit it was built from."""
from __future__ import annotations

import subprocess
from pathlib import Path

from svctrace import __version__

PACKAGE = Path(__file__).resolve().parent.parent


def build_commit() -> str | None:
    """The commit a wheel was built from (its COMMIT file), or, running from a git checkout
    (an editable install), that checkout's commit; None when neither is known."""
    recorded = PACKAGE / "COMMIT"
    if recorded.is_file():
        return recorded.read_text().strip() or None
    root = PACKAGE.parent.parent   # tracer/svctrace -> the checkout
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=5, check=True)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def version_text() -> str:
    """`0.1.0 (commit 0123456789ab)`, or just the version when no commit is known."""
    commit = build_commit()
    return f"{__version__} (commit {commit})" if commit else __version__
