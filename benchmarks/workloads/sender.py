"""Python stand-in for sender.c when no C compiler exists (slower: the probe then says so).

Same usage and modes as sender.c."""
from __future__ import annotations

import json
import os
import socket
import sys
import time

MARKER = b'\x1e["bench"]\n'


def _sender(mode: str, host: str, port: int):
    """One send of the mode (sender.c's usage says what each mode does)."""
    payload = b"svctrace-bench"
    if mode == "storm":
        def connect_once() -> None:
            with socket.create_connection((host, port)) as conn:
                conn.sendall(payload)
        return connect_once
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    if mode != "unfold":
        return lambda: sock.send(payload)
    devnull = os.open(os.devnull, os.O_WRONLY)

    def unfold() -> None:
        os.write(devnull, MARKER)
        sock.send(payload)
    return unfold


def child(host: str, port: int, rate: float, duration: float, mode: str, out: int) -> None:
    send = _sender(mode, host, port)
    n, t0 = 0, time.monotonic()
    end = t0 + duration
    while True:
        t = time.monotonic()
        if t >= end:
            break
        batch = 256
        if rate > 0:
            due = int((t - t0) * rate)
            if due <= n:
                time.sleep(0.0001)
                continue
            batch = min(due - n, 1000)
        for _ in range(batch):
            send()
        n += batch
    os.write(out, f"{n} {t0:.9f} {time.monotonic():.9f}\n".encode())
    os._exit(0)


def main(argv: list[str]) -> int:
    host, port, procs, rate, duration, mode = argv
    procs, port = int(procs), int(port)
    if mode == "accept":
        listener = socket.create_server((host, 0), backlog=4096)
        print(listener.getsockname()[1], flush=True)
        while True:
            listener.accept()[0].close()
    r, w = os.pipe()
    for _ in range(procs):
        if os.fork() == 0:
            os.close(r)
            child(host, port, float(rate) / procs, float(duration), mode, w)
    os.close(w)
    lines = os.fdopen(r).read().split("\n")
    for _ in range(procs):
        os.wait()
    parts = [tuple(map(float, line.split())) for line in lines if line.strip()]
    total = sum(int(p[0]) for p in parts)
    seconds = max(p[2] for p in parts) - min(p[1] for p in parts) if parts else 0.0
    print(json.dumps({"sends": total, "seconds": round(seconds, 6), "procs": procs}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
