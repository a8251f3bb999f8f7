"""Where the runner's CPU goes, step by step: `sudo .venv/bin/python -m benchmarks.runner_split`.

Runs `svctrace run` in this process on the benchmark's 2,000-test PostgreSQL/Redis suite
(serial; --suite realistic: its realistic suite) and adds up the process CPU (time.process_time) spent in each step of the
runner: start-up, reading and decoding marker lines, attributing, draining the backend,
the watermark flushes, and after the session the final attribution, the report and
writing it. The steps' sum is printed beside the runner's whole CPU; the rest is the
interpreter's start and imports. Needs the test services (started if missing) and, for
the ebpf backend, root.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# (module, class, method, label). Each step is charged its own time only: a step called
# from another (the final drain inside _finish) is charged to itself, not to its caller.
STEPS = (
    ("svctrace.run.runner", "Run", "__init__", "configuration, backend choice"),
    ("svctrace.capture.ebpf", "EbpfBackend", "prepare", "backend start (program load)"),
    ("svctrace.run.pluginpath", None, "build", "plugin copied for the command"),
    ("svctrace.run.markerpipe", "MarkerPipe", "read", "read + decode marker lines"),
    ("svctrace.run.pump", "Pump", "feed", "attribute marker records"),
    ("svctrace.run.pump", "Pump", "drain", "drain + decode the backend's records"),
    ("svctrace.join.attribution", "Attributor", "flush", "watermark flushes"),
    ("svctrace.join.collect", "Collector", "finish", "final attribution + report"),
    ("svctrace.run.runner", None, "write_run_report", "write the report"),
    ("svctrace.run.runner", "Run", "_finish", "the rest of the finish (stop, detach, notes)"),
)


class _Clock:
    """Exclusive process-CPU time per label across nested timed calls."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0

    def _switch(self, now: float) -> None:
        if self._stack:
            self.spent[self._stack[-1]] += now - self._since
        self._since = now

    def timed(self, label: str, method):
        @functools.wraps(method)
        def wrapper(*args, **kwargs):
            self._switch(time.process_time())
            self._stack.append(label)
            try:
                return method(*args, **kwargs)
            finally:
                self._switch(time.process_time())
                self._stack.pop()
        return wrapper


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="ebpf", help="ebpf (default), strace, inprocess")
    parser.add_argument("--suite", choices=("suite", "realistic"), default="suite",
                        help="the benchmark's 2,000 tiny tests (default) or its realistic "
                             "suite (10-50 ms tests, fixtures, subprocesses)")
    parser.add_argument("--tests", type=int, help="how many (default 2,000 / 300)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from benchmarks.workloads.realistic import write_realistic
    from benchmarks.workloads.suite import write_suite
    write = write_suite if args.suite == "suite" else write_realistic
    args.tests = args.tests or (2000 if args.suite == "suite" else 300)
    from tests.support import services as svc
    info = svc.ensure_services()
    os.environ["SVCTRACE_BENCH_SERVICES"] = json.dumps(
        {k: info[k] for k in ("pg_port", "pg_socket_dir", "redis_url")})
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # the suite's conftest
    clock = _Clock()
    import importlib
    for module, cls_name, method, label in STEPS:
        owner = importlib.import_module(module)
        owner = getattr(owner, cls_name) if cls_name else owner
        setattr(owner, method, clock.timed(label, getattr(owner, method)))
    from svctrace.cli.main import main as svctrace_main
    with tempfile.TemporaryDirectory(prefix="svctrace-split-") as tmp:
        root = write(Path(tmp) / "suite", args.tests)
        os.chdir(root)
        argv = ["svctrace", "run", "--backend", args.backend, "--report",
                str(Path(tmp) / "report.json"), "-q", "--progress", "0", "--",
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        sys.argv = argv
        try:
            svctrace_main(standalone_mode=False)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise
    whole = time.process_time()
    print(f"\nrunner CPU, {args.suite}, {args.tests} tests, backend {args.backend}: "
          f"{whole:.3f} s "
          f"({whole / args.tests * 1e6:.0f} µs a test, start-up included)")
    for _module, _cls, _method, label in STEPS:
        if label in clock.spent:
            print(f"  {label:46s} {clock.spent[label]:.3f} s")
    rest = whole - sum(clock.spent.values())
    print(f"  {'interpreter start, imports, the loop itself':46s} {rest:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
