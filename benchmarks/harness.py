"""The benchmark: each workload untraced and under every usable backend, round by round."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import workloads as W
from benchmarks import measure
from benchmarks.window import ENV_RESULT

REPO = Path(__file__).resolve().parents[1]
UNTRACED = "untraced"
BACKENDS = ("ebpf", "strace", "inprocess")
SCHEMA = "svctrace-bench/1"


# ----------------------------------------------------------------------------- helpers

def spread(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": [round(v, 4) for v in values]}


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def rotate(items: list, k: int) -> list:
    k %= len(items)
    return items[k:] + items[:k]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="svctrace overhead: every workload untraced and under every usable "
                    "backend, interleaved round by round; prints a Markdown table and writes "
                    "JSON. Run as root for the eBPF backend: "
                    "sudo .venv/bin/python -m benchmarks")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of every configuration (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (a smoke run in well under a minute)")
    parser.add_argument("--only", default=None, metavar="LIST",
                        help=f"comma-separated workloads (default all): {', '.join(W.ALL)}")
    parser.add_argument("--backends", default=None, metavar="LIST",
                        help="comma-separated backends (default: every usable one); "
                             "ebpf+stacks measures svctrace run --stacks")
    parser.add_argument("--size", action="append", default=[], metavar="NAME=N",
                        help="override a size, e.g. --size redis=50000 --size suite=4000")
    parser.add_argument("--kernel-join", choices=("on", "off"), default="on",
                        help="eBPF runs with the join in the kernel (default) or without it "
                             "(kernel_join = false: the user-space path of older kernels); "
                             "the capacity probe's records mode and the memory probe are "
                             "always without it")
    parser.add_argument("--ringbuf-pages", type=int, default=256,
                        help="eBPF ring buffer pages for every run (default 256 = 1 MiB, "
                             "svctrace's default)")
    parser.add_argument("--json", default=str(REPO / "benchmarks" / "results.json"),
                        help="JSON output (default benchmarks/results.json)")
    parser.add_argument("--markdown", default=str(REPO / "benchmarks" / "results.md"),
                        help="Markdown output (default benchmarks/results.md)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    args = parser.parse_args(argv)
    only = [w.strip() for w in args.only.split(",")] if args.only else list(W.ALL)
    unknown = [w for w in only if w not in W.ALL]
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(W.ALL)}")
    args.only = only
    args.rounds = args.rounds or (1 if args.quick else 3)
    sizes = dict(W.QUICK_SIZES if args.quick else W.SIZES)
    for item in args.size:
        name, _, value = item.partition("=")
        if name not in sizes or not value:
            parser.error(f"--size {item!r}: expected NAME=N with NAME in {', '.join(sizes)}")
        sizes[name] = float(value) if name == "step_s" else int(value)
    args.sizes = sizes
    return args


def machine_info() -> dict:
    info = {"kernel": platform.release(), "machine": platform.machine(),
            "cores": os.cpu_count(), "python": platform.python_version()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        info["memory_gib"] = round(kb / 2**20, 1)
    with contextlib.suppress(Exception):
        from svctrace.kernel.bcc_import import load_bcc
        info["bcc"] = getattr(load_bcc(), "__version__", "?")
    with contextlib.suppress(Exception):
        out = subprocess.run(["strace", "-V"], capture_output=True, text=True).stdout
        info["strace"] = out.split("version", 1)[1].split()[0]
    with contextlib.suppress(Exception):
        virt = subprocess.run(["systemd-detect-virt"], capture_output=True, text=True)
        info["virtualization"] = virt.stdout.strip() or "none"
    with contextlib.suppress(Exception):
        from svctrace import __version__
        info["svctrace"] = __version__
    with contextlib.suppress(Exception):
        info["git_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short",
                                             "HEAD"], capture_output=True, text=True
                                            ).stdout.strip()
    from importlib import metadata
    for dist in ("psycopg2-binary", "redis", "confluent-kafka", "pytest", "pytest-xdist"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[dist] = metadata.version(dist)
    with contextlib.suppress(Exception):
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True
                               ).stdout.split("\n")
        info["git_modified"] = [line[3:] for line in dirty if line.strip()]
    info["loadavg_at_start"] = os.getloadavg()[0]
    return info


# ----------------------------------------------------------------------------- the bench

def forget_program_images() -> None:
    """Remove the compiled eBPF programs svctrace keeps until reboot (bpf_image)."""
    from svctrace.kernel import boot_cache
    from svctrace.capture import ebpf
    for path in boot_cache.DIR.glob(f"{ebpf.IMAGE_PREFIX}*.json"):
        path.unlink()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sizes = args.sizes
        self.t0 = time.monotonic()
        self.ident = measure.Identity.current()
        self.work = Path(tempfile.mkdtemp(prefix="svctrace-bench-"))
        os.chmod(self.work, 0o755)
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        self.env["SVCTRACE_BENCH_SIZES"] = json.dumps(self.sizes)
        self.services: dict = {}
        self.skipped: dict[str, str] = {}
        self.results: dict = {"schema": SCHEMA, "micro": {}, "suites": {}, "fixed_cost": {},
                              "capacity": None, "memory": None, "memory_busy": None,
                              "errors": []}
        self.runs = 0

    # -- infrastructure ------------------------------------------------------------------
    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def pyproject(self, name: str, join: bool = True) -> Path:
        path = self.work / name / "pyproject.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = f"[tool.svctrace]\nringbuf_pages = {self.args.ringbuf_pages}\n"
        if not join or self.args.kernel_join == "off":  # the user-space path itself
            text += "kernel_join = false\n"
        if self.services.get("kafka_bootstrap"):  # the mock broker's port is ephemeral
            text += f'\n[tool.svctrace.services]\nkafka = ["{self.services["kafka_bootstrap"]}"]\n'
        path.write_text(text)
        return path

    def backends(self) -> tuple[list[str], dict]:
        from svctrace.capture import availability
        reasons = availability()
        wanted = ([b.strip() for b in self.args.backends.split(",")]
                  if self.args.backends else list(BACKENDS))
        # "ebpf+stacks": the ebpf backend under --stacks (asked for by name only)
        for config in [b for b in wanted if b.endswith("+stacks")]:
            from svctrace.run.stacks import find_py_spy
            base = config.partition("+")[0]
            reasons[config] = reasons.get(base, "unknown backend") or (
                None if find_py_spy() else "py-spy is not installed")
        usable = [b for b in wanted if reasons.get(b) is None]
        return usable, {b: reasons.get(b, "unknown backend") for b in wanted
                        if b not in usable}

    def start_services(self, stack: contextlib.ExitStack) -> None:
        sys.path.insert(0, str(REPO))
        from tests.support import services as svc
        needs_pg_redis = any(w in self.args.only for w in
                             ("libpq-tcp", "libpq-unix", "redis", "suite", "suite-n2",
                              "realistic"))
        if needs_pg_redis:
            try:
                info = svc.ensure_services()
                self.services.update({"pg_port": info["pg_port"],
                                      "pg_socket_dir": info["pg_socket_dir"],
                                      "redis_url": info["redis_url"]})
            except Exception as exc:  # noqa: BLE001 - reported, the rest still runs
                for w in ("libpq-tcp", "libpq-unix", "redis", "suite", "suite-n2",
                          "realistic"):
                    self.skipped[w] = f"PostgreSQL/Redis unavailable: {exc}"
        if "kafka" in self.args.only:
            try:
                import confluent_kafka  # noqa: F401
                self.services["kafka_bootstrap"] = stack.enter_context(
                    svc.kafka_mock_cluster())
            except Exception as exc:  # noqa: BLE001
                self.skipped["kafka"] = f"Kafka mock broker unavailable: {exc}"
        self.env["SVCTRACE_BENCH_SERVICES"] = json.dumps(self.services)

    def run(self, config: str, command: list[str], cwd: Path, name: str, pyproject: Path,
            ok_codes=(0,), progress_s: float = 0, on_progress=None) -> measure.RunResult:
        self.runs += 1
        log_path = self.work / "logs" / f"{self.runs:04d}-{name}-{config}.log"
        log_path.parent.mkdir(exist_ok=True)
        if config == UNTRACED:
            return measure.run(command, env=self.env, cwd=cwd, ident=self.ident, traced=False,
                               log_path=log_path, ok_codes=ok_codes)
        report = self.work / "reports" / f"{self.runs:04d}-{name}-{config}.json"
        report.parent.mkdir(exist_ok=True)
        self.ident.own(report.parent)
        argv = measure.svctrace_command(config, report, pyproject, command, progress_s)
        return measure.run(argv, env=self.env, cwd=cwd, ident=self.ident, traced=True,
                           report=report, log_path=log_path, ok_codes=ok_codes,
                           on_progress=on_progress)

    def error(self, what: str, exc: Exception) -> None:
        text = f"{what}: {exc}"
        self.results["errors"].append(text)
        lines = text.splitlines()
        detail = [line for line in lines if line.startswith(("FAILED", "ERROR", "E  "))][:5]
        self.log("ERROR " + "\n    ".join([lines[0]] + detail) + f"\n    (logs: {self.work}/logs)")
        self.args.keep = True

    # -- loop workloads ------------------------------------------------------------------
    def micro(self, configs: list[str]) -> None:
        names = [w for w in W.MICRO if w in self.args.only and w not in self.skipped]
        if not names:
            return
        pyproject = self.pyproject("micro")
        cwd = pyproject.parent
        nodeids = [f"{W.MICRO_MODULE}::{W.MICRO[w][0]}" for w in names]
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"] + nodeids
        raw: dict[str, list] = {c: [] for c in configs}
        # warm-up, not counted: page cache, bytecode, server-side caches and connections
        self.env[ENV_RESULT] = str(self.work / "micro" / "warmup.jsonl")
        self.ident.own(self.work / "micro")
        try:
            self.run(UNTRACED, command, cwd, "micro-warmup", pyproject)
        except RuntimeError as exc:
            self.error("loops warm-up", exc)
        for rnd in range(self.args.rounds):
            for config in rotate(configs, rnd):
                result_file = self.work / "micro" / f"windows-{config}-{rnd}.jsonl"
                self.env[ENV_RESULT] = str(result_file)
                self.ident.own(self.work / "micro")
                try:
                    res = self.run(config, command, cwd, "micro", pyproject)
                except RuntimeError as exc:
                    self.error(f"loops, round {rnd + 1}, {config}", exc)
                    raw[config].append(None)
                    continue
                windows = {}
                if result_file.exists():
                    for line in result_file.read_text().splitlines():
                        rec = json.loads(line)
                        windows[rec["workload"]] = rec
                raw[config].append((res, windows))
                self.log(f"round {rnd + 1}/{self.args.rounds} loops {config:9s} " + ", ".join(
                    f"{w} {windows[w]['cpu_s']:.2f}s cpu/{windows[w]['wall_s']:.2f}s"
                    for w in names if w in windows))
        self.env.pop(ENV_RESULT, None)
        self.summarize_micro(names, configs, raw)

    def summarize_micro(self, names: list[str], configs: list[str], raw: dict) -> None:
        base = raw[UNTRACED]
        for w in names:
            func, service, description = W.MICRO[w]
            entry = {"description": description, "size": self.sizes[w], "service": service,
                     "untraced": {}, "backends": {}}
            cpus = [r[1][w]["cpu_s"] for r in base if r and w in r[1]]
            walls = [r[1][w]["wall_s"] for r in base if r and w in r[1]]
            entry["untraced"] = {"cpu_s": spread(cpus), "wall_s": spread(walls)}
            for config in configs:
                if config == UNTRACED:
                    continue
                cpu_r, wall_r, ops, rate, rss, sees, tracer = [], [], [], [], [], [], []
                for b, t in zip(base, raw[config]):
                    if not b or not t or w not in b[1] or w not in t[1]:
                        continue
                    res, win = t[0], t[1][w]
                    cpu_r.append(ratio(win["cpu_s"], b[1][w]["cpu_s"]))
                    wall_r.append(ratio(win["wall_s"], b[1][w]["wall_s"]))
                    tracer.append(win["tracer_cpu_s"])
                    n, services = measure.test_ops(res.report or {}, "::" + func)
                    ops.append(n)
                    rate.append(n / win["wall_s"] if win["wall_s"] else None)
                    rss.append(res.rss_between(win["t0_ns"], win["t1_ns"]) or res.peak_rss)
                    sees.append(service in services if service else None)
                entry["backends"][config] = {
                    "cpu_ratio": spread(cpu_r), "wall_ratio": spread(wall_r),
                    "tracer_cpu_s": spread(tracer),
                    "events_seen": median(ops), "events_per_s": median(rate),
                    "sees_service": (all(sees) if sees and sees[0] is not None else None),
                    "tracer_rss_bytes": max([r for r in rss if r], default=None)}
            self.results["micro"][w] = entry
        # What a traced run costs outside the measured loops: start (BPF compile, attach),
        # stop (drain, detach) and the report, plus the tracer's share of pytest's own start.
        for config in configs:
            if config == UNTRACED:
                continue
            cpu, wall, tracer_cpu, recs, lost, peak = [], [], [], [], [], []
            for b, t in zip(base, raw[config]):
                if not b or not t:
                    continue
                outside = lambda r, key: getattr(r[0], key) - sum(v[key] for v in r[1].values())
                cpu.append(outside(t, "cpu_s") - outside(b, "cpu_s"))
                wall.append(outside(t, "wall_s") - outside(b, "wall_s"))
                tracer_cpu.append(t[0].tracer_cpu_s)
                rep = t[0].report or {}
                recs.append(measure.records(rep))
                lost.append(int(rep.get("run", {}).get("lost_events", 0)))
                peak.append(t[0].peak_rss)
            self.results["fixed_cost"][config] = {
                "cpu_s": spread(cpu), "wall_s": spread(wall),
                "tracer_process_cpu_s": spread(tracer_cpu),
                "records_per_run": median(recs), "lost_events_total": sum(lost),
                "peak_rss_bytes": max([p for p in peak if p], default=None)}

    # -- the end-to-end suite --------------------------------------------------------------
    def suites(self, configs: list[str]) -> None:
        modes = [m for m in W.SUITES if m in self.args.only and m not in self.skipped]
        if not modes:
            return
        from benchmarks.workloads.realistic import write_realistic
        from benchmarks.workloads.suite import write_suite
        base_cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        roots: dict[str, Path] = {}
        for mode in modes:
            kind = "realistic" if mode == "realistic" else "suite"
            if kind not in roots:
                writer = write_realistic if kind == "realistic" else write_suite
                roots[kind] = writer(self.work / kind, self.sizes[kind],
                                     self.args.ringbuf_pages)
                self.ident.own(roots[kind])
                # compile the test files once (bytecode cache), as any repeated run would
                self.run(UNTRACED, base_cmd + ["--collect-only"], roots[kind],
                         f"{kind}-warmup", roots[kind] / "pyproject.toml")
        for mode in modes:
            extra = W.SUITES[mode][0]
            kind = "realistic" if mode == "realistic" else "suite"
            root, tests = roots[kind], self.sizes[kind]
            pyproject = root / "pyproject.toml"
            raw: dict[str, list] = {c: [] for c in configs}
            for rnd in range(self.args.rounds):
                for config in rotate(configs, rnd):
                    result_file = self.work / "suite-windows" / f"{mode}-{config}-{rnd}.jsonl"
                    result_file.parent.mkdir(exist_ok=True)
                    self.ident.own(result_file.parent)
                    self.env[ENV_RESULT] = str(result_file)
                    try:
                        res = self.run(config, base_cmd + extra, root, mode, pyproject)
                        window = json.loads(result_file.read_text().splitlines()[-1])
                    except (RuntimeError, OSError, IndexError, ValueError) as exc:
                        self.error(f"{mode}, round {rnd + 1}, {config}", exc)
                        raw[config].append(None)
                        continue
                    raw[config].append(self.suite_costs(res, window))
                    c = raw[config][-1]
                    self.log(f"round {rnd + 1}/{self.args.rounds} {mode:8s} {config:9s} "
                             f"{c['cpu_s']:.2f}s cpu/{c['wall_s']:.2f}s (tracer process "
                             f"{c['tracer_cpu_s']:.2f}s), whole run {res.cpu_s:.2f}s cpu/"
                             f"{res.wall_s:.2f}s")
            self.env.pop(ENV_RESULT, None)
            self.summarize_suite(mode, tests, configs, raw)

    @staticmethod
    def suite_costs(res: measure.RunResult, window: dict) -> dict:
        """Steady-state cost of a suite run. CPU: pytest's session (main process and its
        workers, the tracer while it runs) plus all the tracer does after the session
        (drain, attribution, report; also detach, which is fixed but not separable).
        Wall: the session. Not included: interpreter start-up and the tracer's start (BPF
        compile), which are fixed costs (see the whole-run ratios)."""
        after = max(0.0, res.tracer_cpu_s - window["tracer_cpu_at_end_s"]) \
            if window["tracer_pids"] else 0.0
        return {"cpu_s": window["cpu_s"] + after, "wall_s": window["wall_s"],
                "tracer_after_session_cpu_s": after,
                "tracer_cpu_s": window["tracer_cpu_s"] + after,
                "full_cpu_s": res.cpu_s, "full_wall_s": res.wall_s, "report": res.report,
                "peak_rss": res.peak_rss}

    def summarize_suite(self, mode: str, tests: int, configs: list[str], raw: dict) -> None:
        base = raw[UNTRACED]
        ok = [b for b in base if b]
        entry = {"description": W.SUITES[mode][1], "tests": tests, "untraced": {
            "cpu_s": spread([b["cpu_s"] for b in ok]),
            "wall_s": spread([b["wall_s"] for b in ok]),
            "full_cpu_s": spread([b["full_cpu_s"] for b in ok]),
            "full_wall_s": spread([b["full_wall_s"] for b in ok])}, "backends": {}}
        for config in configs:
            if config == UNTRACED:
                continue
            cpu, wall, f_cpu, f_wall, ops, rate, recs, lost, rss, split = ([] for _ in range(10))
            services = {}
            for b, t in zip(base, raw[config]):
                if not b or not t:
                    continue
                cpu.append(ratio(t["cpu_s"], b["cpu_s"]))
                wall.append(ratio(t["wall_s"], b["wall_s"]))
                f_cpu.append(ratio(t["full_cpu_s"], b["full_cpu_s"]))
                f_wall.append(ratio(t["full_wall_s"], b["full_wall_s"]))
                split.append({"extra_cpu_s": round(t["cpu_s"] - b["cpu_s"], 3),
                              "tracer_process_cpu_s": round(t["tracer_cpu_s"], 3),
                              "pytest_side_extra_cpu_s": round(t["cpu_s"] - t["tracer_cpu_s"]
                                                               - b["cpu_s"], 3)})
                rep = t["report"] or {}
                n = sum(measure.report_ops(rep).values())
                ops.append(n)
                rate.append(n / t["wall_s"] if t["wall_s"] else None)
                recs.append(measure.records(rep))
                lost.append(int(rep.get("run", {}).get("lost_events", 0)))
                rss.append(t["peak_rss"])
                services = rep.get("summary", {}).get("services", {})
            entry["backends"][config] = {
                "cpu_ratio": spread(cpu), "wall_ratio": spread(wall),
                "cpu_ratio_incl_start": spread(f_cpu), "wall_ratio_incl_start": spread(f_wall),
                "events_seen": median(ops), "events_per_s": median(rate),
                "records": median(recs), "lost_events_total": sum(lost),
                "tracer_rss_bytes": max([r for r in rss if r], default=None),
                "tests_per_service": services, "overhead_split": split}
        self.results["suites"][mode] = entry

    # -- fixed cost: a trivial pytest run, whole ------------------------------------------
    def startup(self, configs: list[str]) -> None:
        """Whole-run CPU and wall of a one-test pytest project, traced minus untraced in
        the same round (median of the runs in a round): start-up, compile and attach, the
        one test, stop, detach, report. The harness waits for the run's own process only:
        work a backend hands to a detached helper (the eBPF detach) is not on this clock."""
        if "startup" not in self.args.only:
            return
        from benchmarks.workloads.realistic import write_trivial
        root = write_trivial(self.work / "startup", self.args.ringbuf_pages)
        self.ident.own(root)
        pyproject = root / "pyproject.toml"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        self.run(UNTRACED, command, root, "startup-warmup", pyproject)
        if "ebpf" in configs:  # the first run of a boot compiles; later ones load the image
            configs = [*configs, "ebpf+compile"]
        per_round: dict[str, list] = {c: [] for c in configs}
        for rnd in range(self.args.rounds):
            for config in rotate(configs, rnd):
                cpu, wall, tracer = [], [], []
                for _ in range(max(1, int(self.sizes["startup"]))):
                    if config == "ebpf+compile":
                        forget_program_images()
                    try:
                        res = self.run(config, command, root, "startup", pyproject)
                    except RuntimeError as exc:
                        self.error(f"startup, round {rnd + 1}, {config}", exc)
                        continue
                    cpu.append(res.cpu_s)
                    wall.append(res.wall_s)
                    tracer.append(res.tracer_cpu_s)
                per_round[config].append({"cpu_s": median(cpu), "wall_s": median(wall),
                                          "tracer_cpu_s": median(tracer)} if cpu else None)
                c = per_round[config][-1]
                if c:
                    self.log(f"round {rnd + 1}/{self.args.rounds} startup  {config:9s} "
                             f"{c['cpu_s']:.2f}s cpu/{c['wall_s']:.2f}s wall")
        base = per_round[UNTRACED]
        out = {"description": W.STARTUP["startup"], "untraced": {
            "cpu_s": spread([b["cpu_s"] for b in base if b]),
            "wall_s": spread([b["wall_s"] for b in base if b])}, "backends": {}}
        for config in configs:
            if config == UNTRACED:
                continue
            pairs = [(b, t) for b, t in zip(base, per_round[config]) if b and t]
            out["backends"][config] = {
                "cpu_s": spread([t["cpu_s"] - b["cpu_s"] for b, t in pairs]),
                "wall_s": spread([t["wall_s"] - b["wall_s"] for b, t in pairs]),
                "tracer_process_cpu_s": spread([t["tracer_cpu_s"] for _, t in pairs])}
        self.results["startup"] = out

    # -- eBPF capacity ---------------------------------------------------------------------
    def sender(self) -> tuple[list[str], str]:
        gcc = shutil.which("gcc") or shutil.which("cc")
        if gcc:
            exe = self.work / "sender"
            done = subprocess.run([gcc, "-O2", "-o", str(exe), str(W.SENDER_C)],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                os.chmod(exe, 0o755)
                return [str(exe)], "C (gcc -O2)"
            self.log(f"compiling sender.c failed, using the Python sender: {done.stderr[:200]}")
        return [sys.executable, str(W.SENDER_PY)], "Python (no C compiler: sender-limited)"

    def acceptor(self, sender: list[str], stack: contextlib.ExitStack) -> int:
        """The storm's TCP listener: an untraced process outside every traced tree (its
        own listeners are not services), stopped with the stack. Its port."""
        proc = subprocess.Popen(sender + ["127.0.0.1", "0", "1", "0", "0", "accept"],
                                stdout=subprocess.PIPE, text=True)
        stack.callback(proc.wait)
        stack.callback(proc.kill)
        return int(proc.stdout.readline())

    def capacity(self, receiver_port: int, sender: list[str], kind: str,
                 stack: contextlib.ExitStack) -> None:
        step_s = self.sizes["step_s"]
        ladders = W.QUICK_LADDER if self.args.quick else W.LADDER
        out = {"sender": kind, "procs": 2, "step_s": step_s,
               "ringbuf_bytes": self.args.ringbuf_pages * 4096, "modes": {}}
        for mode, (arg, join) in W.CAPACITY_MODES.items():
            pyproject = self.pyproject(f"capacity-{mode}", join=join)
            cwd = pyproject.parent
            port = self.acceptor(sender, stack) if mode == "storm" else receiver_port
            cmd = lambda rate: sender + ["127.0.0.1", str(port), "2", str(rate),
                                         str(step_s), arg]
            base = self.run(UNTRACED, cmd(0), cwd, f"capacity-{mode}", pyproject)
            sent = _last_json(base.stderr_tail)
            steps, lossy_in_row = [], 0
            for rate in ladders[mode]:
                try:
                    res = self.run("ebpf", cmd(rate), cwd, f"capacity-{mode}", pyproject)
                except RuntimeError as exc:
                    self.error(f"capacity {mode} {rate}/s", exc)
                    break
                got = _last_json(res.stderr_tail)
                rep = res.report or {}
                seen = _evidence_total(rep, "sends")
                connects = _evidence_total(rep, "connects")
                lost = int(rep.get("run", {}).get("lost_events", 0))
                recs = measure.records(rep)
                step = {"target_per_s": rate or "max", "sent": got["sends"],
                        "seconds": got["seconds"],
                        "sent_per_s": got["sends"] / got["seconds"] if got["seconds"] else 0,
                        "seen": seen, "records": recs,
                        "records_per_s": recs / got["seconds"] if got["seconds"] else 0,
                        "lost_events": lost, "missing_sends": got["sends"] - seen,
                        "tracer_peak_rss_bytes": res.peak_rss}
                if mode == "storm":  # a connection a send: both must be seen
                    step["connects_seen"] = connects
                    step["missing_connects"] = got["sends"] - connects
                step["zero_loss"] = lost == 0 and step["missing_sends"] == 0 \
                    and not step.get("missing_connects")
                steps.append(step)
                self.log(f"capacity {mode:8s} target {rate or 'max'}/s: sent "
                         f"{step['sent_per_s']:,.0f}/s, seen {seen:,} of {got['sends']:,}, "
                         f"{recs:,} records, {lost:,} lost")
                lossy_in_row = 0 if step["zero_loss"] else lossy_in_row + 1
                if lossy_in_row >= 2:
                    break
            ok = [s for s in steps if s["zero_loss"]]
            best = max(ok, key=lambda s: s["sent_per_s"], default=None)
            above = [s for s in steps if not s["zero_loss"]
                     and (best is None or s["sent_per_s"] > best["sent_per_s"])]
            out["modes"][mode] = {
                "untraced_max_sent_per_s": sent["sends"] / sent["seconds"],
                "steps": steps,
                "max_zero_loss_sends_per_s": best["sent_per_s"] if best else 0,
                "max_zero_loss_records_per_s": best["records_per_s"] if best else 0,
                "first_lossy_step": above[0] if above else None}
        self.results["capacity"] = out

    def memory(self, receiver_port: int, sender: list[str]) -> None:
        """The tracer's RSS while >= memory records (unfolded sends, kernel_join off: one
        record a send) are consumed and attributed, on a quiet machine ("memory") and with
        a CPU-bound process beside it ("memory_busy")."""
        probe = (self.results.get("capacity") or {}).get("modes", {}).get("records", {})
        # A third of the capacity probe's zero-loss rate: here every record is attributed
        # to a test, which costs the consumer more than the probe's unattributed records.
        rate = int(self.sizes["memory_rate"]) or \
            max(20_000, int((probe.get("max_zero_loss_sends_per_s") or 0) / 3))
        self.results["memory"] = self._memory_run(receiver_port, sender, rate, busy=False)
        self.results["memory_busy"] = self._memory_run(receiver_port, sender, rate, busy=True)

    def _memory_run(self, receiver_port: int, sender: list[str], rate: int, busy: bool
                    ) -> dict | None:
        name = "memory-busy" if busy else "memory"
        pyproject = self.pyproject(name, join=False)
        cwd = pyproject.parent
        total = self.sizes["memory"]
        chunks = 10
        seconds = total * 1.05 / rate
        result_file = self.work / name / "sent.jsonl"
        self.env["SVCTRACE_BENCH_MEMORY"] = json.dumps({
            "sender": sender, "host": "127.0.0.1", "port": receiver_port, "procs": 2,
            "rate": rate, "chunks": chunks, "chunk_s": round(seconds / chunks, 3),
            "result": str(result_file)})
        self.ident.own(self.work / name)
        beside = " beside a CPU-bound process" if busy else ""
        self.log(f"{name}: {total:,}+ one-record sends at {rate:,}/s in {chunks} tests "
                 f"(~{seconds:.0f} s){beside}")
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   str(W.MEMORY_MODULE)]
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            res = self.run("ebpf", command, cwd, name, pyproject, progress_s=1,
                           on_progress=lambda line: None)
        except RuntimeError as exc:
            self.error(name, exc)
            return None
        finally:
            self.env.pop("SVCTRACE_BENCH_MEMORY", None)
            if hog is not None:
                hog.kill()
                hog.wait()
        rep = res.report or {}
        sent = sum(json.loads(line)["sends"] for line in result_file.read_text().splitlines())
        points = []
        for _t, line, rss in res.progress:
            found = re.search(r"(\d+) events?, ", line)  # "1 event, " too
            if found and rss:
                points.append({"events": int(found.group(1)), "rss_bytes": rss})
        # "start" once a tenth of the records arrived: the attribution backlog (3 s of
        # events) and Python's heap have grown to their working size by then
        none = {"events": None, "rss_bytes": None}
        last = points[-1] if points else none
        first = next((p for p in points if p["events"] >= 0.1 * last["events"]), none)
        m = {"rate_per_s": rate, "sent": sent, "records": measure.records(rep),
             "seen": _evidence_total(rep, "sends"), "busy_neighbour": busy,
             "lost_events": int(rep.get("run", {}).get("lost_events", 0)),
             "start": first, "end": last, "progress": points,
             "peak_rss_bytes": res.peak_rss, "wall_s": res.wall_s}
        self.log(f"{name}: {m['records']:,} records, {m['seen']:,} of {sent:,} sends seen, "
                 f"{m['lost_events']:,} lost, RSS "
                 f"{_mib(first['rss_bytes'])} at {_n(first['events'])} events -> "
                 f"{_mib(last['rss_bytes'])} at {_n(last['events'])} events "
                 f"(peak {_mib(m['peak_rss_bytes'])})")
        return m

    # -- everything ----------------------------------------------------------------------------
    def main(self) -> dict:
        usable, unusable = self.backends()
        configs = [UNTRACED] + usable
        for name, reason in unusable.items():
            self.log(f"backend {name} skipped: {reason}")
        self.results.update({
            "command": (("sudo " if os.environ.get("SUDO_UID") else "")
                        + f"{_shown_python()} -m benchmarks " + " ".join(sys.argv[1:])).strip(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine_info(), "rounds": self.args.rounds, "quick": self.args.quick,
            "sizes": self.sizes, "backends": usable, "unavailable_backends": unusable,
            "ringbuf_pages": self.args.ringbuf_pages, "kernel_join": self.args.kernel_join})
        self.log(f"workloads: {', '.join(self.args.only)}; configurations: "
                 f"{', '.join(configs)}; {self.args.rounds} round(s); scratch {self.work}")
        with contextlib.ExitStack() as stack:
            self.start_services(stack)
            for name, reason in self.skipped.items():
                if name in self.args.only:
                    self.log(f"{name} skipped: {reason}")
            self.results["skipped"] = {k: v for k, v in self.skipped.items()
                                       if k in self.args.only}
            self.micro(configs)
            self.suites(configs)
            self.startup(configs)
            probes = [p for p in W.PROBES if p in self.args.only]
            if probes and "ebpf" not in usable:
                self.results["skipped"].update({p: "the ebpf backend is not usable here: "
                                                   + unusable.get("ebpf", "not selected")
                                                for p in probes})
            elif probes:
                receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                stack.callback(receiver.close)
                receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                receiver.bind(("127.0.0.1", 0))  # never read: a full buffer drops, cheaply
                port = receiver.getsockname()[1]
                sender, kind = self.sender()
                if "capacity" in probes:
                    self.capacity(port, sender, kind, stack)
                if "memory" in probes:
                    self.memory(port, sender)
        self.results["duration_s"] = round(time.monotonic() - self.t0, 1)
        self.results["targets"] = targets(self.results)
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)
        return self.results


# ----------------------------------------------------------------------------- output

def _evidence_total(rep: dict, key: str) -> int:
    """Sends (or connects) counted in a report's evidence, attributed or not."""
    total = sum(c.get(key, 0) for e in rep.get("unattributed", [])
                for c in (e.get("evidence") or {}).values())
    return total + sum(c.get(key, 0) for t in rep.get("tests", {}).values()
                       for c in (t.get("evidence") or {}).values())


def _last_json(text: str) -> dict:
    """The sender's result: the last JSON line (svctrace may print notes after it)."""
    return json.loads(next(line for line in reversed(text.strip().splitlines())
                           if line.startswith("{")))


def _shown_python() -> str:
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(Path.cwd()))
    return str(exe)


def _mib(value) -> str:
    return f"{value / 2**20:.0f} MiB" if value else "-"


def _x(s: dict | None) -> str:
    if not s:
        return "-"
    return f"{s['median']:.2f}x ({s['min']:.2f}-{s['max']:.2f})"


def _s(s: dict | None) -> str:
    return f"{s['median']:.2f} s" if s and s.get("median") is not None else "-"


def _n(value) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else "-"


def targets(res: dict) -> list[dict]:
    """The issue's targets, measured (never asserted)."""
    out = []

    def add(name, goal, value, ok, unit="x"):
        out.append({"target": name, "goal": goal, "measured": value,
                    "met": None if value is None else ok(value), "unit": unit})

    def med(path):
        node = res
        for key in path:
            node = (node or {}).get(key) if isinstance(node, dict) else None
        return node["median"] if isinstance(node, dict) and "median" in node else None

    def suite(mode, backend, key="cpu_ratio"):
        return med(["suites", mode, "backends", backend, key])

    def micro(name, backend):
        return med(["micro", name, "backends", backend, "cpu_ratio"])

    def fixed(backend, key):
        return med(["startup", "backends", backend, key])

    # The performance targets the project holds itself to (a traced run against an
    # untraced one, medians of ratios)
    add("eBPF CPU, pytest suite (serial, steady state)", "<= 1.10x",
        suite("suite", "ebpf"), lambda v: v <= 1.10)
    add("eBPF CPU, pytest suite -n 2 (steady state)", "<= 1.05x",
        suite("suite-n2", "ebpf"), lambda v: v <= 1.05)
    add("in-process CPU, pytest suite (serial, steady state)", "<= 1.10x",
        suite("suite", "inprocess"), lambda v: v <= 1.10)
    add("in-process CPU, pytest suite -n 2 (steady state)", "<= 1.05x",
        suite("suite-n2", "inprocess"), lambda v: v <= 1.05)
    add("eBPF fixed cost, trivial pytest run: wall added", "<= 1.0 s",
        fixed("ebpf", "wall_s"), lambda v: v <= 1.0, "s")
    add("eBPF fixed cost, trivial pytest run: CPU added", "<= 1.0 s",
        fixed("ebpf", "cpu_s"), lambda v: v <= 1.0, "s")
    add("eBPF whole run, realistic suite: CPU (start-up included)", "<= 1.05x",
        suite("realistic", "ebpf", "cpu_ratio_incl_start"), lambda v: v <= 1.05)
    add("eBPF whole run, realistic suite: wall (start-up included)", "<= 1.05x",
        suite("realistic", "ebpf", "wall_ratio_incl_start"), lambda v: v <= 1.05)
    add("strace CPU, pytest suite (serial, steady state)", "<= 2.5x",
        suite("suite", "strace"), lambda v: v <= 2.5)
    add("strace CPU, libpq loop (TCP)", "<= 3.0x", micro("libpq-tcp", "strace"),
        lambda v: v <= 3.0)
    # earlier issues' targets, still measured
    add("eBPF CPU, libpq loop (TCP)", "<= 1.10x", micro("libpq-tcp", "ebpf"),
        lambda v: v <= 1.10)
    add("eBPF CPU, libpq loop (unix socket)", "<= 1.10x", micro("libpq-unix", "ebpf"),
        lambda v: v <= 1.10)
    add("in-process CPU, redis loop", "<= 1.10x", micro("redis", "inprocess"),
        lambda v: v <= 1.10)
    modes = (res.get("capacity") or {}).get("modes", {})
    if modes:
        # one record per send: since the kernel join, the records mode (kernel_join off)
        add("eBPF zero-loss rate, unfolded (1 record per send)", ">= 200,000/s",
            (modes.get("records") or modes.get("unfolded", {})).get(
                "max_zero_loss_records_per_s"),
            lambda v: v >= 200_000, "/s")
        add("eBPF zero-loss rate, folded sends (1 socket per process)", ">= 200,000/s",
            modes.get("folded", {}).get("max_zero_loss_sends_per_s"),
            lambda v: v >= 200_000, "/s")
    for key, beside in (("memory", ""), ("memory_busy", ", beside a CPU-bound process")):
        mem = res.get(key)
        if mem and mem["start"].get("rss_bytes") and mem["end"].get("rss_bytes"):
            growth = (mem["end"]["rss_bytes"] - mem["start"]["rss_bytes"]) / 2**20
            add(f"eBPF tracer RSS flat from {mem['start']['events']:,} to "
                f"{mem['end']['events']:,} records{beside}", "flat (< 10 MiB growth)",
                round(growth, 1), lambda v: v < 10, "MiB")
        if mem:
            add(f"eBPF lost records, memory workload{beside}", "0", mem["lost_events"],
                lambda v: v == 0, "n")
    # Performance round 3 (the join in the kernel)
    add("eBPF whole run, 2,000 tiny tests: CPU (start-up included)", "<= 1.15x",
        suite("suite", "ebpf", "cpu_ratio_incl_start"), lambda v: v <= 1.15)
    add("eBPF whole run, 2,000 tiny tests: wall (start-up included)", "<= 1.15x",
        suite("suite", "ebpf", "wall_ratio_incl_start"), lambda v: v <= 1.15)
    add("eBPF whole run, realistic suite: CPU, round 3", "<= 1.03x",
        suite("realistic", "ebpf", "cpu_ratio_incl_start"), lambda v: v <= 1.03)
    add("eBPF whole run, realistic suite: wall, round 3", "<= 1.03x",
        suite("realistic", "ebpf", "wall_ratio_incl_start"), lambda v: v <= 1.03)
    add("eBPF CPU, libpq loop (TCP), round 3", "<= 1.05x", micro("libpq-tcp", "ebpf"),
        lambda v: v <= 1.05)
    for mode in ("folded", "unfolded", "storm"):
        top = _full_speed(modes.get(mode))
        if top is not None:
            add(f"eBPF lost events at the untraced sender's full speed, {mode}", "0",
                top["lost_events"] + max(0, top["missing_sends"])
                + max(0, top.get("missing_connects", 0)), lambda v: v == 0, "n")
    return out


def _full_speed(mode: dict | None) -> dict | None:
    """A capacity mode's step at full speed (target 0: "max"), if it ran."""
    return next((s for s in (mode or {}).get("steps", []) if s["target_per_s"] == "max"),
                None)


def markdown(res: dict) -> str:
    m = res.get("machine", {})
    lines = ["## svctrace benchmark", "",
             f"`{res['command']}`: {res['rounds']} round(s), "
             f"{res['duration_s'] / 60:.1f} min, {res['started_at']}.  ",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores')} cores, "
             f"{m.get('memory_gib', '?')} GiB, {m.get('virtualization', '?')}; Linux "
             f"{m.get('kernel')}; Python {m.get('python')}; bcc {m.get('bcc', '-')}; strace "
             f"{m.get('strace', '-')}; svctrace {m.get('svctrace', '?')} "
             f"({m.get('git_commit', '?')}"
             f"{' + local changes' if m.get('git_modified') else ''}).", ""]
    if res.get("unavailable_backends"):
        lines += ["Backends not measured: " + "; ".join(
            f"{b} ({r})" for b, r in res["unavailable_backends"].items()), ""]
    if res.get("micro") or res.get("suites"):
        lines += ["How to read: each ratio is traced / untraced for the same workload in the "
                  "same round, median of the rounds (min-max); 1.00x means free. CPU = user+sys "
                  "of the workload's processes (BPF programs run inside them) plus the "
                  "tracer's own processes (svctrace, strace), over the steady-state window: "
                  "the loop itself, or the pytest session plus the tracer's report work; "
                  "the services' own CPU is not counted. The tracer's fixed start cost (BPF "
                  "compile) is in the tables below. Events = sends and connects the backend "
                  "saw.", "",
                  "| workload | untraced CPU / wall | backend | sees it? | CPU | wall | "
                  "tracer process CPU | events seen | events/s | tracer RSS |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, e in res.get("micro", {}).items():
            u = e["untraced"]
            first = True
            for backend, b in e["backends"].items():
                sees = {True: "yes", False: "**no**", None: "n/a"}[b["sees_service"]]
                head = (f"{name}: {e['description']} ({e['size']:,})",
                        f"{u['cpu_s']['median']:.2f} s / {u['wall_s']['median']:.2f} s"
                        if u.get("cpu_s") else "-") if first else ("", "")
                lines.append(f"| {head[0]} | {head[1]} | {backend} | {sees} | "
                             f"{_x(b['cpu_ratio'])} | {_x(b['wall_ratio'])} | "
                             f"{_s(b['tracer_cpu_s'])} | "
                             f"{_n(b['events_seen'])} | {_n(b['events_per_s'])} | "
                             f"{_mib(b['tracer_rss_bytes'])} |")
                first = False
        for name, e in res.get("suites", {}).items():
            u = e["untraced"]
            first = True
            for backend, b in e["backends"].items():
                tps = b.get("tests_per_service") or {}
                sees = ", ".join(f"{s} {n}" for s, n in sorted(tps.items())) or "nothing"
                head = (f"{name}: {e['description']} ({e['tests']:,} tests)",
                        f"{u['cpu_s']['median']:.2f} s / {u['wall_s']['median']:.2f} s"
                        if u.get("cpu_s") else "-") if first else ("", "")
                tracer = median([x["tracer_process_cpu_s"] for x in b["overhead_split"]])
                lines.append(f"| {head[0]} | {head[1]} | {backend} | {sees} | "
                             f"{_x(b['cpu_ratio'])} | {_x(b['wall_ratio'])} | "
                             f"{_s({'median': tracer} if tracer is not None else None)} | "
                             f"{_n(b['events_seen'])} | {_n(b['events_per_s'])} | "
                             f"{_mib(b['tracer_rss_bytes'])} |")
                first = False
        lines.append("")
    if res.get("suites"):
        lines += ["Whole `svctrace run` of the suite, start-up (BPF compile) and report "
                  "included:", "", "| suite | backend | CPU | wall | records | lost |",
                  "|---|---|---|---|---|---|"]
        for name, e in res["suites"].items():
            for backend, b in e["backends"].items():
                lines.append(f"| {name} | {backend} | {_x(b['cpu_ratio_incl_start'])} | "
                             f"{_x(b['wall_ratio_incl_start'])} | {_n(b['records'])} | "
                             f"{_n(b['lost_events_total'])} |")
        lines.append("")
    if res.get("fixed_cost"):
        lines += ["Fixed cost of one traced run (start, BPF compile/attach, stop, report), "
                  "beyond the untraced run, measured on the loop runs:", "",
                  "| backend | CPU s | wall s | records per run | lost | tracer peak RSS |",
                  "|---|---|---|---|---|---|"]
        for backend, f in res["fixed_cost"].items():
            c, w = f["cpu_s"], f["wall_s"]
            lines.append(f"| {backend} | {c['median']:.2f} ({c['min']:.2f}-{c['max']:.2f}) | "
                         f"{w['median']:.2f} ({w['min']:.2f}-{w['max']:.2f}) | "
                         f"{_n(f['records_per_run'])} | {_n(f['lost_events_total'])} | "
                         f"{_mib(f['peak_rss_bytes'])} |" if c and w else f"| {backend} | - |")
        lines.append("")
    st = res.get("startup")
    if st and st.get("backends"):
        u = st["untraced"]
        lines += [f"Fixed cost of a whole traced run of a one-test pytest project (start, "
                  f"attach, stop, detach, report), beyond the untraced run "
                  f"({_s(u['cpu_s'])} CPU / {_s(u['wall_s'])} wall); median of the rounds "
                  f"(min-max), each round the median of {res['sizes'].get('startup')} runs:",
                  "", "| backend | CPU added | wall added | svctrace process CPU |",
                  "|---|---|---|---|"]
        sec = lambda d: (f"{d['median']:.2f} s ({d['min']:.2f}-{d['max']:.2f})"
                         if d else "-")
        labels = {"ebpf": "ebpf (program kept from an earlier run this boot)",
                  "ebpf+compile": "ebpf, a boot's first run (bcc compiles the program)"}
        for backend, b in st["backends"].items():
            lines.append(f"| {labels.get(backend, backend)} | {sec(b['cpu_s'])} | {sec(b['wall_s'])} | "
                         f"{sec(b['tracer_process_cpu_s'])} |")
        lines.append("")
    cap = res.get("capacity")
    if cap:
        lines += [f"eBPF capacity ({cap['procs']} {cap['sender']} sender processes, "
                  f"{cap['step_s']:g} s per step, ring buffer "
                  f"{cap['ringbuf_bytes'] // 1024} KiB):", "",
                  "| mode | target/s | sent/s | sends seen | records | records/s | lost | "
                  "zero loss |", "|---|---|---|---|---|---|---|---|"]
        for mode, d in cap["modes"].items():
            for s in d["steps"]:
                lines.append(f"| {mode} | {_n(s['target_per_s']) if s['target_per_s'] != 'max' else 'max'} | "
                             f"{_n(s['sent_per_s'])} | {_n(s['seen'])} / {_n(s['sent'])} | "
                             f"{_n(s['records'])} | {_n(s['records_per_s'])} | "
                             f"{_n(s['lost_events'])} | {'yes' if s['zero_loss'] else '**no**'} |")
        lines.append("")
        for mode, d in cap["modes"].items():
            lines.append(f"- {mode}: highest zero-loss rate {_n(d['max_zero_loss_sends_per_s'])} "
                         f"sends/s ({_n(d['max_zero_loss_records_per_s'])} records/s); "
                         f"untraced sender max {_n(d['untraced_max_sent_per_s'])} sends/s.")
        lines.append("")
    heads = {"memory": "eBPF tracer memory (svctrace process RSS at 1 s progress lines, "
                       "from a tenth of the records on):",
             "memory_busy": "The same beside a CPU-bound process:"}
    for key, head in heads.items():
        mem = res.get(key)
        if not mem:
            continue
        lines += [f"{head} "
                  f"{_n(mem['records'])} ring buffer records at {_n(mem['rate_per_s'])}/s "
                  f"({_n(mem['lost_events'])} lost): {_mib(mem['start']['rss_bytes'])} at "
                  f"{_n(mem['start']['events'])} events, {_mib(mem['end']['rss_bytes'])} at "
                  f"{_n(mem['end']['events'])} events, peak {_mib(mem['peak_rss_bytes'])}.", ""]
    measured = [t for t in res.get("targets", []) if t["measured"] is not None]
    if measured:
        lines += ["| target | goal | measured | met |", "|---|---|---|---|"]
        for t in measured:
            v = t["measured"]
            shown = "-" if v is None else (f"{v:.2f}x" if t["unit"] == "x" else
                                           f"{v:,.0f}/s" if t["unit"] == "/s" else
                                           f"{v:.2f} s" if t["unit"] == "s" else
                                           f"{v:,}" if t["unit"] == "n" else
                                           f"{v:+.1f} MiB")
            met = {True: "yes", False: "**no**", None: "-"}[t["met"]]
            lines.append(f"| {t['target']} | {t['goal']} | {shown} | {met} |")
        lines.append("")
    if res.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items()), ""]
    if res.get("errors"):
        lines += ["Errors:", ""] + [f"- {e.splitlines()[0]}" for e in res["errors"]] + [""]
    return "\n".join(lines)


def _json_default(obj):
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(type(obj).__name__)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench = Bench(args)
    results = bench.main()
    text = markdown(results)
    print(text)
    for path, data in ((Path(args.json), json.dumps(results, indent=1,
                                                    default=_json_default) + "\n"),
                       (Path(args.markdown), text + "\n")):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data)
        if bench.ident.uid is not None:
            with contextlib.suppress(OSError):
                os.chown(path, bench.ident.uid, bench.ident.gid)
    bench.log(f"wrote {args.markdown} and {args.json}")
    return 1 if results["errors"] else 0
