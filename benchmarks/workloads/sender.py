"""Python stand-in for sender.c when no C compiler exists (slower: the probe then says so)."""
from __future__ import annotations

import json
import os
import socket
import sys
import time

MARKER = b'\x1e["bench"]\n'


def child(host: str, port: int, rate: float, duration: float, unfold: bool, out: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((host, port))
    devnull = os.open(os.devnull, os.O_WRONLY)
    send, write, payload = sock.send, os.write, b"svctrace-bench"
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
            if unfold:
                write(devnull, MARKER)
            send(payload)
        n += batch
    os.write(out, f"{n} {t0:.9f} {time.monotonic():.9f}\n".encode())
    os._exit(0)


def main(argv: list[str]) -> int:
    host, port, procs, rate, duration, mode = argv
    procs = int(procs)
    r, w = os.pipe()
    for _ in range(procs):
        if os.fork() == 0:
            os.close(r)
            child(host, int(port), float(rate) / procs, float(duration), mode == "unfold", w)
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
