"""The in-process backend announces Python threads as the kernel backends do."""
from __future__ import annotations

import os
import socket
import threading

from svctrace.capture import inprocess
from svctrace.events import Event, ProcessEvent


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_thread_birth_is_announced_dated_before_its_traffic_and_the_patch_comes_off():
    records: list = []
    port = _closed_port()
    real_start = threading.Thread.start

    def work():
        with socket.socket() as sock:
            sock.connect_ex(("127.0.0.1", port))

    inprocess.install(records.append)
    try:
        worker = threading.Thread(target=work, name="bg-worker")
        worker.start()
        worker.join()
    finally:
        inprocess.uninstall()
    assert threading.Thread.start is real_start
    births = [r for r in records if isinstance(r, ProcessEvent)]
    assert [(b.kind, b.pid, b.tid, b.ppid, b.comm) for b in births] == [
        ("thread", os.getpid(), worker.native_id, threading.get_native_id(), "bg-worker")]
    (connect,) = [r for r in records if isinstance(r, Event)]
    assert connect.tid == worker.native_id
    assert births[0].mono_ns <= connect.mono_ns and births[0].wall_ns is not None


def test_threads_started_after_uninstall_are_not_announced():
    records: list = []
    inprocess.install(records.append)
    inprocess.uninstall()
    worker = threading.Thread(target=lambda: None)
    worker.start()
    worker.join()
    assert records == []
