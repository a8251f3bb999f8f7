"""Measures a steady-state window inside a workload: its own CPU plus its tracer's, and wall time."""
from __future__ import annotations

import json
import os
import resource
import time

ENV_HARNESS = "SVCTRACE_BENCH_HARNESS_PID"  # the benchmark process: ancestors stop below it
ENV_RESULT = "SVCTRACE_BENCH_RESULT"        # JSON lines file the windows are appended to


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def tracer_pids() -> list[int]:
    """Ancestors of this process below the harness: `svctrace run` (and strace, when it
    wraps the command). Empty for an untraced run (the harness is the direct parent)."""
    stop = int(os.environ.get(ENV_HARNESS, "0"))
    pids, pid = [], os.getppid()
    while stop and pid > 1 and pid != stop:
        pids.append(pid)
        try:
            pid = _ppid(pid)
        except OSError:
            break
    return pids if pid == stop else []


def process_cpu_ns(pid: int) -> int:
    """CPU time (user+sys, all threads, ns) of another process through its CPU-time clock
    (clockid ((~pid) << 3) | CPUCLOCK_SCHED): ns resolution, unlike /proc ticks."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)
    except OSError:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) * 10**9 // os.sysconf("SC_CLK_TCK")
        except OSError:
            return 0


class Window:
    """with Window("redis", ops=20000): <the loop>  -> one JSON line in $SVCTRACE_BENCH_RESULT.

    CPU = this process (all threads; BPF programs run in the traced task and are charged
    to it) + the tracer processes above it, over the window only: the tracer's start-up
    (BPF compile) and report writing are outside and are measured separately."""

    def __init__(self, workload: str, ops: int, children: bool = False) -> None:
        self.workload, self.ops, self.children = workload, ops, children
        self.tracers = tracer_pids()

    def _sample(self) -> tuple[int, int, int]:
        own = time.clock_gettime_ns(time.CLOCK_PROCESS_CPUTIME_ID)
        if self.children:  # reaped children, e.g. xdist workers once the session is over
            usage = resource.getrusage(resource.RUSAGE_CHILDREN)
            own += int((usage.ru_utime + usage.ru_stime) * 1e9)
        return (time.monotonic_ns(), own, sum(process_cpu_ns(pid) for pid in self.tracers))

    def __enter__(self) -> "Window":
        self.start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.stop()

    def stop(self) -> None:
        end = self._sample()
        record = {"workload": self.workload, "ops": self.ops,
                  "t0_ns": self.start[0], "t1_ns": end[0],
                  "wall_s": (end[0] - self.start[0]) / 1e9,
                  "workload_cpu_s": (end[1] - self.start[1]) / 1e9,
                  "tracer_cpu_s": (end[2] - self.start[2]) / 1e9,
                  "tracer_cpu_at_end_s": end[2] / 1e9,
                  "tracer_pids": self.tracers}
        record["cpu_s"] = record["workload_cpu_s"] + record["tracer_cpu_s"]
        path = os.environ.get(ENV_RESULT)
        if path:
            with open(path, "a") as fh:
                fh.write(json.dumps(record) + "\n")
