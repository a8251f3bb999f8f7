"""What a proof costs: `sudo .venv/bin/python -m benchmarks.prove_cost`.

On the benchmark's PostgreSQL/Redis suite (benchmarks/workloads/suite.py: a quarter of the
tests touch PostgreSQL, a quarter Redis, a quarter both, a quarter nothing), interleaved
round by round: the plain traced run (`svctrace run`), then `svctrace prove` of its report
(per service a control and a denied re-run of the tests that touched it). Reports the wall
time of each, their ratio, the re-runs' own times and the test executions a proof adds.
Writes JSON (`svctrace-bench/1`, field "prove"). Needs root (the guard) and the services.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import SCHEMA, spread
from benchmarks.workloads.suite import write_suite

REPO = Path(__file__).resolve().parent.parent
SVCTRACE = [sys.executable, "-m", "svctrace"]


def _timed(cmd: list[str], cwd: Path, env: dict, ok=(0, 1)) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    took = time.monotonic() - started
    if done.returncode not in ok:
        raise SystemExit(f"{' '.join(cmd[:4])}... exited {done.returncode}:\n"
                         f"{done.stdout[-1500:]}\n{done.stderr[-1500:]}")
    return took, done.stderr


def measure(tests: int, rounds: int, pytest_args: list[str], jobs: int,
            backend: str, services: str | None = None) -> dict:
    from tests.support import services as svc
    info = svc.ensure_services()
    work = Path(tempfile.mkdtemp(prefix="svctrace-bench-prove-"))
    suite = write_suite(work / "suite", tests)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        "SVCTRACE_BENCH_SERVICES": json.dumps({"pg_port": info["pg_port"],
                                               "redis_url": info["redis_url"]})}
    pytest = [sys.executable, "-m", "pytest", "-q", *pytest_args]
    plain, prove, reruns, executions = [], [], [], 0
    for _ in range(rounds):  # interleaved: the VM's slow spells hit both alike
        took, _ = _timed([*SVCTRACE, "run", "-q", "--backend", backend, "--progress", "0",
                          "-o", "r.json", "--", *pytest], suite, env)
        plain.append(took)
        only = ["--services", services] if services else []
        took, _ = _timed([*SVCTRACE, "prove", "r.json", "-o", "p.json", "--jobs", str(jobs),
                          *only, "--", *pytest], suite, env, ok=(0,))
        prove.append(took)
        proof = json.loads((suite / "p.json").read_text())["run"]["proof"]
        reruns.append([r["duration_s"] for r in proof["reruns"]])
        executions = sum(r["tests"] for r in proof["reruns"])
    shutil.rmtree(work, ignore_errors=True)
    ratios = [p / q for p, q in zip(prove, plain)]
    return {"tests": tests, "pytest_args": pytest_args, "jobs": jobs, "backend": backend,
            "services": services or "all",
            "rounds": rounds, "reruns": len(reruns[-1]) if reruns else 0,
            "test_executions": executions,
            "plain_run_s": spread(plain), "prove_s": spread(prove),
            "prove_to_plain": spread(ratios),
            "rerun_s": spread([sum(r) for r in reruns])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.prove_cost",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=int, default=400, help="tests in the suite (400)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, interleaved (3)")
    parser.add_argument("--jobs", type=int, default=1, help="prove --jobs (1)")
    parser.add_argument("--xdist", action="store_true", help="pytest -n 2 in COMMAND")
    parser.add_argument("--backend", default="ebpf", help="tracer of every run (ebpf)")
    parser.add_argument("--services", default=None, metavar="LIST",
                        help="prove --services (default: every service; redis-py retries a "
                             "refused connect with back-off, ~2 s a test)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "prove.json"),
                        help="JSON output (default benchmarks/prove.json)")
    args = parser.parse_args(argv)
    result = measure(args.tests, args.rounds, ["-n", "2"] if args.xdist else [], args.jobs,
                     args.backend, args.services)
    Path(args.json).write_text(json.dumps({"schema": SCHEMA, "prove": result}, indent=1)
                               + "\n")
    med = {k: result[k]["median"] for k in ("plain_run_s", "prove_s", "prove_to_plain")}
    print(f"| suite | plain traced run | prove ({result['reruns']} re-runs, "
          f"{result['test_executions']} test executions) | prove / plain |\n|---|---:|---:|---:|\n"
          f"| {args.tests} tests{' -n 2' if args.xdist else ''}, jobs {args.jobs}, "
          f"services {result['services']} | "
          f"{med['plain_run_s']:.1f} s | {med['prove_s']:.1f} s | "
          f"{med['prove_to_plain']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
