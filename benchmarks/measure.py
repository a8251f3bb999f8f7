"""Runs one command, untraced or under `svctrace run`, and measures it from outside."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.window import ENV_HARNESS, process_cpu_ns

SAMPLE_S = 0.05


@dataclass
class Identity:
    """Who commands run as: under sudo svctrace runs the command as the invoking user, so the
    untraced runs do the same (same uid, same HOME) for a fair comparison."""

    uid: int | None = None
    gid: int | None = None
    groups: list[int] = field(default_factory=list)

    @classmethod
    def current(cls) -> "Identity":
        uid = os.environ.get("SUDO_UID")
        if os.geteuid() != 0 or not uid or int(uid) == 0:
            return cls()
        import pwd
        gid = int(os.environ.get("SUDO_GID", uid))
        try:
            groups = os.getgrouplist(pwd.getpwuid(int(uid)).pw_name, gid)
        except KeyError:
            groups = [gid]
        return cls(int(uid), gid, groups)

    def own(self, path: Path) -> None:
        if self.uid is None:
            return
        for root, dirs, files in os.walk(path):
            os.chown(root, self.uid, self.gid)
            for name in files:
                os.chown(os.path.join(root, name), self.uid, self.gid)

    def popen_kwargs(self) -> dict:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": self.groups}


@dataclass
class RunResult:
    """What one run cost, seen from outside (wait4 of the whole process tree)."""

    argv: list[str]
    exit_code: int
    wall_s: float
    cpu_s: float                   # user+sys of the whole tree: command + tracer
    tracer_cpu_s: float = 0.0      # the svctrace process (and strace) alone, whole run
    rss_samples: list = field(default_factory=list)  # (monotonic ns, tracer RSS bytes)
    report: dict | None = None
    stderr_tail: str = ""
    progress: list = field(default_factory=list)     # (monotonic ns, progress line, rss)
    ended_ns: int = 0              # monotonic time the run's process exited

    @property
    def peak_rss(self) -> int | None:
        return max((rss for _, rss in self.rss_samples), default=None)

    def rss_between(self, t0: int, t1: int) -> int | None:
        inside = [rss for t, rss in self.rss_samples if t0 <= t <= t1]
        return max(inside, default=None)


class _Sampler(threading.Thread):
    """Samples the tracer's RSS (svctrace + strace) and CPU while the run lasts."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[int, int]] = []
        self.cpu: dict[int, int] = {}
        self.stop = threading.Event()

    def tracer_processes(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.pid)
            procs = [main]
            for child in main.children():
                try:
                    if child.name() == "strace":
                        procs.append(child)
                except psutil.Error:
                    pass
            return procs
        except psutil.Error:
            return []

    def sample(self) -> None:
        rss = 0
        for proc in self.tracer_processes():
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
            if proc.pid != self.pid:
                cpu = process_cpu_ns(proc.pid)
                if cpu:
                    self.cpu[proc.pid] = cpu
        if rss:
            self.samples.append((time.monotonic_ns(), rss))

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_S):
            self.sample()


def svctrace_command(backend: str, report: Path, config: Path, command: list[str],
                     progress_s: float = 0) -> list[str]:
    """backend: a backend name, or NAME+stacks for `svctrace run --stacks`, or
    ebpf+compile (the caller removed the kept program image: a boot's first run)."""
    name, _, option = backend.partition("+")
    extra = ["--stacks"] if option == "stacks" else []
    return [sys.executable, "-m", "svctrace", "run", "--backend", name, *extra, "--report",
            str(report), "--config", str(config), "--progress", str(progress_s), "-q",
            "--"] + command


def run(argv: list[str], *, env: dict, cwd: Path, ident: Identity, traced: bool,
        report: Path | None = None, log_path: Path, ok_codes=(0,), on_progress=None
        ) -> RunResult:
    """Run argv to completion. traced: argv is a `svctrace run` command (then the tracer's
    RSS/CPU are sampled and its report read). Raises RuntimeError on an unexpected status."""
    env = dict(env)
    env[ENV_HARNESS] = str(os.getpid())
    if report is not None and report.exists():
        report.unlink()
    with open(log_path, "wb") as out:
        started = time.monotonic_ns()
        # svctrace's progress lines reach pytest's output (the plugin prints them between
        # tests) or, without a plugin taking them, svctrace's stderr: read both.
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE if on_progress else out,
                                stderr=subprocess.STDOUT if on_progress else out,
                                **({} if traced else ident.popen_kwargs()))
        sampler = _Sampler(proc.pid) if traced else None
        if sampler:
            sampler.sample()
            sampler.start()
        reader = None
        progress: list = []
        if on_progress:
            def pump() -> None:
                for raw in proc.stdout:
                    out.write(raw)
                    line = raw.decode(errors="replace").rstrip()
                    rss = None
                    if sampler:
                        procs = sampler.tracer_processes()
                        try:
                            rss = sum(p.memory_info().rss for p in procs)
                        except psutil.Error:
                            pass
                    progress.append((time.monotonic_ns(), line, rss))
                    on_progress(line)
            reader = threading.Thread(target=pump, daemon=True)
            reader.start()
        # Wait without reaping: a zombie still answers its CPU clock, so the tracer's own
        # CPU is exact (the tree total from wait4 includes the command as well).
        os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
        ended = time.monotonic_ns()
        tracer_cpu = process_cpu_ns(proc.pid) if traced else 0
        if sampler:
            sampler.stop.set()
            sampler.join()
            tracer_cpu += sum(sampler.cpu.values())
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if reader:
            reader.join(5)
    tail = log_path.read_bytes()[-3000:].decode(errors="replace")
    if proc.returncode not in ok_codes:
        raise RuntimeError(f"`{' '.join(argv)}` exited {proc.returncode}; output tail:\n{tail}")
    result = RunResult(argv, proc.returncode, (ended - started) / 1e9,
                       usage.ru_utime + usage.ru_stime, tracer_cpu / 1e9,
                       sampler.samples if sampler else [], stderr_tail=tail,
                       progress=progress, ended_ns=ended)
    if traced and report is not None:
        try:
            result.report = json.loads(report.read_text())
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"no readable report at {report}: {exc}; output tail:\n{tail}")
    return result


def report_ops(report: dict) -> dict:
    """Operations the tracer observed (sends + connects, folded sends counted one by one),
    over tests, wider-scoped fixtures and unattributed traffic: {service: ops}."""
    ops: dict[str, int] = {}

    def add(evidence: dict) -> None:
        for service, contact in (evidence or {}).items():
            ops[service] = ops.get(service, 0) + contact.get("sends", 0) + \
                contact.get("connects", 0)

    for test in report.get("tests", {}).values():
        add(test.get("evidence"))
    for fixture in (report.get("fixtures") or {}).values():
        add(fixture.get("evidence"))
    for entry in report.get("unattributed") or []:
        add(entry.get("evidence"))
    return ops


def test_ops(report: dict, name_suffix: str) -> tuple[int, list[str]]:
    """(ops, services) of the one test whose node id ends with name_suffix."""
    for nodeid, test in report.get("tests", {}).items():
        if nodeid.endswith(name_suffix):
            evidence = test.get("evidence") or {}
            ops = sum(c.get("sends", 0) + c.get("connects", 0) for c in evidence.values())
            return ops, sorted(evidence)
    return 0, []


def records(report: dict) -> int:
    """What the backend delivered to svctrace: ring buffer records (ebpf), parsed events
    (strace), events through the marker pipe (inprocess)."""
    run_info = report.get("run", {})
    stats = run_info.get("backend_stats") or {}
    if "events" in stats:
        return int(stats["events"])
    return int((run_info.get("events") or {}).get("events", 0))
