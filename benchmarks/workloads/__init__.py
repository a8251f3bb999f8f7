"""The benchmark workloads: names, what each does, and their sizes (default and --quick)."""
from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
MICRO_MODULE = HERE / "bench_micro.py"
SENDER_C = HERE / "sender.c"
SENDER_PY = HERE / "sender.py"
MEMORY_MODULE = HERE / "bench_memory.py"

# name: (pytest function in bench_micro.py, service it must show, description)
MICRO = {
    "cpu": ("test_cpu", None, "CPU-only Python loop, no syscalls"),
    "libpq-tcp": ("test_libpq_tcp", "postgres", "psycopg2 SELECT 1 round trips, TCP"),
    "libpq-unix": ("test_libpq_unix", "postgres", "psycopg2 SELECT 1 round trips, unix socket"),
    "redis": ("test_redis", "redis", "redis-py PING round trips"),
    "kafka": ("test_kafka", "kafka", "librdkafka produce (100 B messages) + flush, mock broker"),
}
SUITES = {
    "suite": ([], "pytest suite of small PostgreSQL/Redis tests, serial"),
    "suite-n2": (["-n", "2"], "the same suite with pytest-xdist -n 2"),
    "realistic": ([], "realistic suite: 10-50 ms tests, PostgreSQL/Redis work, fixtures, "
                      "a subprocess in one test of five, serial"),
}
# Whole runs, not windows: what a traced run of a one-test project costs beyond pytest.
STARTUP = {"startup": "fixed cost: a trivial pytest run (start, attach, stop, detach, report)"}
PROBES = {
    "capacity": "eBPF capacity: highest zero-loss send rate: folded, unfolded (marker-like "
                "writes to /dev/null), records (the same, kernel_join off: a record a send) "
                "and a storm of short-lived TCP connections",
    "memory": "eBPF tracer RSS while >= 1M ring buffer records are consumed (kernel_join "
              "off: a record a send), quiet and beside a CPU-bound process",
}
ALL = list(MICRO) + list(SUITES) + list(STARTUP) + list(PROBES)

SIZES = {
    "cpu": 5_000_000, "libpq-tcp": 20_000, "libpq-unix": 20_000, "redis": 20_000,
    "kafka": 400_000, "suite": 2_000,   # suite: tests (serial and -n 2)
    "realistic": 300, "startup": 5,     # startup: runs of the trivial project per round
    "step_s": 2.0,          # capacity: seconds per rate step
    "memory": 1_000_000,    # ring buffer records for the memory check
    "memory_rate": 0,       # their rate; 0: a third of the probe's zero-loss rate, >= 20k
}
QUICK_SIZES = {
    "cpu": 300_000, "libpq-tcp": 1_000, "libpq-unix": 1_000, "redis": 1_000,
    "kafka": 20_000, "suite": 200, "realistic": 40, "startup": 2, "step_s": 0.5,
    "memory": 50_000,
    "memory_rate": 0,
}
# Total target rates (sends/s over all sender processes) tried in turn; the probe stops
# after two steps in a row lose events.
LADDER = {
    "unfolded": [100_000, 200_000, 400_000, 0],  # 0: at full speed
    "folded": [100_000, 200_000, 250_000, 300_000, 400_000, 600_000, 0],
    "records": [20_000, 40_000, 60_000, 80_000, 100_000, 150_000, 200_000, 300_000],
    "storm": [5_000, 10_000, 20_000, 30_000, 0],
}
QUICK_LADDER = {"unfolded": [200_000, 0], "folded": [200_000, 0], "records": [40_000, 200_000],
                "storm": [10_000, 0]}
# capacity mode (as results.json names it) -> (the sender's mode, sender.c's usage; whether
# the kernel join is on). "records": the unfolded sender with kernel_join off, today's path
# on older kernels: one ring buffer record per send.
CAPACITY_MODES = {"folded": ("fold", True), "unfolded": ("unfold", True),
                  "records": ("unfold", False), "storm": ("storm", True)}
