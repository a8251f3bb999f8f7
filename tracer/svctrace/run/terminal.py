"""What the user sees while the command runs: the terminal's foreground group, progress lines."""
from __future__ import annotations

import os
import signal
import sys
import time

from svctrace.contract import progress_path


def give_terminal(pid: int) -> int | None:
    """Interactive: make the command the terminal's foreground group, so Ctrl-C reaches
    it once (as with plain pytest) and we only forward signals sent to us."""
    try:
        if not os.isatty(0) or os.tcgetpgrp(0) != os.getpgrp():
            return None
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(0, pid)
        finally:
            signal.signal(signal.SIGTTOU, old)
        return os.getpgrp()
    except OSError:
        return None


def take_terminal(pgrp: int | None) -> None:
    if pgrp is None:
        return
    old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.tcsetpgrp(0, pgrp)
    except OSError:
        pass
    finally:
        signal.signal(signal.SIGTTOU, old)


class Progress:
    """Every `every_s` seconds, one progress line, handed to the owner pytest."""

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._last = time.monotonic()
        self._print_here = False

    def due(self) -> bool:
        if self.every_s and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            return True
        return False

    def show(self, pipe_path: str, text: str, plugin_seen: bool) -> None:
        """Hand the progress line to the owner pytest (plugin.Progress prints it between
        tests); with no plugin writing markers, or one that left a line untaken for long,
        print it here, on a line of its own."""
        path = progress_path(pipe_path)
        try:
            # The plugin looks once a second, between tests: a line left much longer means
            # no plugin takes them (or one test runs for long): print them here from now on.
            if time.time() - os.lstat(path).st_mtime > max(10.0, 2 * self.every_s):
                self._print_here = True
        except OSError:
            pass
        if self._print_here or not plugin_seen:
            # pytest's dot line is usually open on the terminal: start a line of our own
            print(f"\nsvctrace: {text}", file=sys.stderr, flush=True)
            return
        # Created exclusively and renamed over the target: a link planted in the user's
        # run folder is replaced, never written through (we may be root).
        temp = path + ".new"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "w") as out:
                out.write(f"svctrace: {text}\n")
            os.rename(temp, path)
        except OSError:
            self._print_here = True
            print(f"\nsvctrace: {text}", file=sys.stderr, flush=True)
