"""The runner's per-record cost, replayed: `python -m benchmarks.runner_replay`.

A run's CPU on this shared VM swings more than the runner's per-record work costs, so this
replays a marker stream instead: the lines the plugin writes for N tests shaped like the
suite benchmark's (six phase edges, fixture windows, a TestInfo each), fed to the runner's
decoder and attributor in 64 KiB reads, as `svctrace run` reads its pipe. Best of several
repetitions, with the runner's garbage-collector setting and with Python's default. No
root, no services.
"""
from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from svctrace.capture import wire  # noqa: E402
from svctrace.join.collect import Collector  # noqa: E402
from svctrace.config import load_config  # noqa: E402
from svctrace.events import TestInfo  # noqa: E402
from svctrace.run.runner import RUN_GC_YOUNG  # noqa: E402


def stream(tests: int) -> bytes:
    """The marker bytes of `tests` tests of one process, as the plugin writes them: a
    TestInfo each at collection, then four PhaseEdge lines a test (fixture windows with the
    ends of setup and teardown, each end 10 µs before the next start)."""
    pid, worker, lines, now = 4242, wire.json_text(None), [], 10**12
    for i in range(tests):
        nodeid = f"tests/test_bench_{i // 100:03d}.py::test_{i:05d}"
        lines += wire.encode(TestInfo(nodeid, ("::pg", "::pg_conn"), ("pg",),
                                      nodeid.split("::")[0]))
    for i in range(tests):
        prefix = wire.edge_prefix(pid, worker, wire.json_text(
            f"tests/test_bench_{i // 100:03d}.py::test_{i:05d}"))
        ended = windows = None
        for phase in ("setup", "call", "teardown", None):
            lines.append(wire.edge_line(prefix, now, now + 7, phase, ended,
                                        ended and "passed", ended and 0.0003, windows or "",
                                        phase and ended and now - 10_000,
                                        phase and ended and now - 9_993))
            windows = f'["::pg",{now + 10},{now + 17},{now + 299_990},{now + 299_997}]' \
                if phase != "call" else None
            ended, now = phase, now + 300_000
        now += 20_000
    return b"".join(lines)


def stream_markers(tests: int) -> bytes:
    """The same in the plugin's earlier lines: a Marker per phase edge, a FixtureWindows
    line per phase with fixtures (9 lines a test, against 5)."""
    pid, worker, lines, now = 4242, wire.json_text(None), [], 10**12
    for i in range(tests):
        nodeid = f"tests/test_bench_{i // 100:03d}.py::test_{i:05d}"
        lines += wire.encode(TestInfo(nodeid, ("::pg", "::pg_conn"), ("pg",),
                                      nodeid.split("::")[0]))
    for i in range(tests):
        nodeid = wire.json_text(f"tests/test_bench_{i // 100:03d}.py::test_{i:05d}")
        for phase in ("setup", "call", "teardown"):
            start, now = now, now + 300_000
            lines.append(wire.marker_line(start, start + 7, pid, worker, nodeid, phase,
                                          "start"))
            if phase != "call":
                lines.append(wire.windows_line(pid, phase, [
                    f'["::pg",{start + 10},{start + 17},{now - 10},{now - 3}]']))
            lines.append(wire.marker_line(now, now + 7, pid, worker, nodeid, phase, "end",
                                          "passed", 0.0003))
            now += 20_000
    return b"".join(lines)


def replay(data: bytes, cfg) -> float:
    """CPU seconds to decode and attribute `data` read 64 KiB at a time."""
    started = time.process_time()
    decoder, collector = wire.Decoder(), Collector(cfg, "mono")
    add = collector.attributor.add
    for offset in range(0, len(data), 1 << 16):
        for record in decoder.feed(data[offset:offset + (1 << 16)]):
            add(record)
    spent = time.process_time() - started
    assert collector.attributor.counts["markers"] > 0 and not decoder.bad_lines
    return spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=8000, help="tests replayed (8,000)")
    parser.add_argument("--repeat", type=int, default=7, help="repetitions, best kept (7)")
    parser.add_argument("--markers", action="store_true", help="replay the plugin's earlier "
                        "lines (a Marker per phase edge) instead, to compare")
    args = parser.parse_args()
    data, cfg = (stream_markers if args.markers else stream)(args.tests), load_config(None)
    lines = data.count(b"\n")
    gc.freeze()  # as the runner does once started
    default = gc.get_threshold()
    print(f"replaying {args.tests:,} tests: {lines:,} marker lines, {len(data) / 1e6:.1f} MB"
          + (" (the earlier Marker lines)" if args.markers else ""))
    settings = {"Python's default GC": default[0],
                f"the runner's GC (young generation {RUN_GC_YOUNG:,})": RUN_GC_YOUNG}
    spent: dict[str, list[float]] = {label: [] for label in settings}
    for _ in range(args.repeat):  # interleaved: the VM's slow spells hit both alike
        for label, young in settings.items():
            gc.set_threshold(young, *default[1:])
            spent[label].append(replay(data, cfg))
            gc.collect()
    gc.set_threshold(*default)
    for label, times in spent.items():
        best = min(times)
        print(f"  {label:46s} {best * 1e3:7.1f} ms  ({best / lines * 1e6:.2f} µs a line, "
              f"{best / args.tests * 1e6:.1f} µs a test)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
