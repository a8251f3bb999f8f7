"""Test-side access to the real services: Postgres and Redis via scripts/services.py, and a
librdkafka mock Kafka broker in a helper process.

Plain functions, no pytest import, so conftest.py (or a script) decides how to wire them:
e.g. a session fixture `return ensure_services()` and a fixture wrapping kafka_mock_cluster().
"""
from __future__ import annotations

import contextlib
import functools
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]
SERVICES_PY = REPO / "scripts" / "services.py"
KAFKA_BROKER_PY = Path(__file__).with_name("kafka_broker.py")


class ServicesUnavailable(RuntimeError):
    """The service binaries are not installed here (scripts/setup.sh was not run)."""


def binaries_missing() -> list[str]:
    """What scripts/setup.sh would have installed but is absent; empty when all is there."""
    missing = []
    if not (shutil.which("redis-server") or os.access("/usr/bin/redis-server", os.X_OK)):
        missing.append("redis-server")
    # Debian keeps pg_ctl out of PATH, under /usr/lib/postgresql/<major>/bin.
    if not (any(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")) or shutil.which("pg_ctl")):
        missing.append("postgresql (pg_ctl)")
    return missing


@functools.lru_cache(maxsize=None)
def ensure_services() -> dict:
    """Start Postgres and Redis once per process (a no-op when already up) and describe them.

    Returns {"pg_dsn", "pg_socket_dir", "pg_port", "redis_url", "redis_port", "dir"}.
    Raises ServicesUnavailable when the binaries are missing, RuntimeError with the
    script's own message (including the server log's tail) when start-up fails.
    """
    missing = binaries_missing()
    if missing:
        raise ServicesUnavailable(f"not installed: {', '.join(missing)} (run scripts/setup.sh)")
    started = subprocess.run([sys.executable, str(SERVICES_PY), "start"],
                             stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if started.returncode != 0:
        raise RuntimeError(started.stderr.strip() or started.stdout.strip())
    env = json.loads(subprocess.run([sys.executable, str(SERVICES_PY), "env", "--json"],
                                    check=True, capture_output=True, text=True).stdout)
    return {"pg_dsn": env["SVCTRACE_PG_DSN"], "pg_socket_dir": env["SVCTRACE_PG_SOCKET_DIR"],
            "pg_port": int(env["SVCTRACE_PG_PORT"]), "redis_url": env["SVCTRACE_REDIS_URL"],
            "redis_port": int(env["SVCTRACE_REDIS_PORT"]), "dir": env["SVCTRACE_SERVICES_DIR"]}


@contextlib.contextmanager
def kafka_mock_cluster(timeout: float = 15.0, brokers: int = 1) -> Iterator[str]:
    """Run tests/support/kafka_broker.py and yield its bootstrap servers ("127.0.0.1:PORT").

    The broker lives while its stdin pipe is open: closing it on exit stops it, and if this
    process dies the broker sees EOF and exits too (no orphan brokers across test runs).
    """
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: nothing can block on it
        proc = subprocess.Popen([sys.executable, str(KAFKA_BROKER_PY), "--brokers", str(brokers)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr)
        try:
            yield _read_bootstrap(proc, stderr, timeout)
        finally:
            proc.stdin.close()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def _read_bootstrap(proc: subprocess.Popen, stderr, timeout: float) -> str:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    line, deadline = b"", time.monotonic() + timeout
    while not line.endswith(b"\n"):
        if not sel.select(max(0.0, deadline - time.monotonic())):
            proc.kill()
            raise RuntimeError(f"kafka mock broker printed no bootstrap address within "
                               f"{timeout:.0f}s{_stderr_text(stderr)}")
        chunk = os.read(proc.stdout.fileno(), 1024)
        if not chunk:
            proc.wait()
            raise RuntimeError(f"kafka mock broker exited (code {proc.returncode}) before "
                               f"printing its bootstrap address{_stderr_text(stderr)}")
        line += chunk
    sel.close()
    return line.decode().strip()


def _stderr_text(stderr) -> str:
    stderr.seek(0)
    text = stderr.read().decode(errors="replace").strip()
    return f"; its stderr:\n{text[-2000:]}" if text else ""
