"""The FIFO every pytest process of the run writes its marker records to, and its reader."""
from __future__ import annotations

import errno
import fcntl
import os

from svctrace.capture import wire
from svctrace.run.child import Identity
from svctrace.run.rundirs import make_private_dir, remove_private_dir, sweep_leftovers

F_SETPIPE_SZ = 1031


class MarkerPipe:
    """The FIFO every pytest process of the run writes its records to."""

    def __init__(self, ident: Identity) -> None:
        self.notes = sweep_leftovers()  # a runner killed by SIGKILL could not clean up
        # Only the user the command runs as (and root) may write markers: 0700, theirs.
        self.dir = make_private_dir(ident.uid, ident.gid) if ident.drops else make_private_dir()
        self.path = os.path.join(self.dir, "markers")
        os.mkfifo(self.path, 0o600)
        if ident.drops:
            os.chown(self.path, ident.uid, ident.gid)
        self.rfd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # Our own write end keeps the FIFO from reporting EOF between writers.
        self.keep_wfd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(self.rfd, F_SETPIPE_SZ, 1 << 20)  # absorb bursts from many workers
        except OSError:
            pass
        self.decoder = wire.Decoder()

    def read(self) -> list:
        records = []
        while True:
            try:
                data = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            if not data:
                break
            records.extend(self.decoder.feed(data))
        return records

    def damage(self) -> str | None:
        """A note on unreadable or unfinished records, if any."""
        if self.decoder.bad_lines or self.decoder.incomplete():
            return (f"{self.decoder.bad_lines} unreadable and "
                    f"{self.decoder.incomplete()} incomplete marker records")
        return None

    def close(self) -> None:
        for fd in (self.keep_wfd, self.rfd):
            try:
                os.close(fd)
            except OSError:
                pass
        remove_private_dir(self.dir)
