"""A loopback listener that records what a real client sends first, then hangs up.

The protocol recognisers are tested on these bytes: what psycopg2, redis-py, librdkafka,
urllib3 or ssl really send, not a blob written by hand. The client sees its server close
the connection (each caller expects and swallows the client's error).
"""
from __future__ import annotations

import socket
import threading
from typing import Callable


def first_bytes(client: Callable[[int], object], limit: int = 1024,
                idle_s: float = 0.5, accept_s: float = 15.0) -> bytes:
    """Run client(port) against a fresh TCP listener on 127.0.0.1; return the bytes the
    first connection sent before it went quiet for idle_s (at most `limit`)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(accept_s)
    got: dict[str, bytes] = {}
    done = threading.Event()

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        record(conn)
        # Clients retry (redis-py backs off and reconnects): hang up on each at once, so
        # a retry fails fast instead of waiting out its timeout in the backlog.
        server.settimeout(0.1)
        while not done.is_set():
            try:
                server.accept()[0].close()
            except OSError:
                pass

    def record(conn: socket.socket) -> None:
        conn.settimeout(idle_s)
        data = b""
        try:
            while len(data) < limit:
                chunk = conn.recv(limit - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        got["data"] = data
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client(server.getsockname()[1])
    except Exception:  # noqa: BLE001 - the server hung up on purpose
        pass
    done.set()
    thread.join(accept_s + idle_s + 5)
    server.close()
    return got.get("data", b"")


def first_datagram(client: Callable[[int], object], timeout_s: float = 5.0) -> bytes:
    """Run client(port) against a UDP socket on 127.0.0.1; return its first datagram."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(timeout_s)
    try:
        client(sock.getsockname()[1])
        return sock.recv(65535)
    except OSError:
        return b""
    finally:
        sock.close()
