"""Executor pool workers of this process: their work belongs to whichever test submits it.

A worker thread that concurrent.futures (asyncio's default executor, asgiref's
sync_to_async) or multiprocessing.pool.ThreadPool starts lazily in one test runs what
later tests submit. Attribution would take it for a thread that outlived its test; the
plugin tells it apart by the Python function the thread runs, which no tracer sees.
"""
from __future__ import annotations

import sys
import threading


def _pool_targets() -> tuple:
    """The worker functions of the pool modules this process has imported (never imports
    one itself)."""
    targets = []
    futures = sys.modules.get("concurrent.futures.thread")
    if futures is not None and hasattr(futures, "_worker"):
        targets.append(futures._worker)
    mp_pool = sys.modules.get("multiprocessing.pool")
    if mp_pool is not None and hasattr(mp_pool, "worker"):
        targets.append(mp_pool.worker)
    return tuple(targets)


class PoolWatch:
    """Finds pool workers not reported yet (cheap: a look at threading.enumerate())."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def new_workers(self) -> list[tuple[int, str]]:
        """[(native thread id, Python name)] of workers started since the last call."""
        targets = _pool_targets()
        if not targets:
            return []
        found = []
        for thread in threading.enumerate():
            native = thread.native_id
            if native is None or native in self._seen:
                continue
            # Thread.run deletes _target only when the target returns: a live worker has it.
            if getattr(thread, "_target", None) in targets:
                self._seen.add(native)
                found.append((native, thread.name))
        return found
