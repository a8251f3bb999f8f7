"""`svctrace prove`: re-run the tests that touched each service with that service refused by
the guard, beside a control run of the same tests with nothing refused, and attach each
test's verdicts (svctrace.plan.proof) to the report."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

from svctrace.contract import ENV_SELECT
from svctrace.errors import SvctraceError
from svctrace.plan import proof
from svctrace.report.files import load_report
from svctrace.report.model import ReportError
from svctrace.userfiles import invoking_user
from svctrace.words import counted

SVCTRACE = [sys.executable, "-m", "svctrace"]
LOG_TAIL = 15  # lines of a failed re-run's output worth showing


class ProveError(SvctraceError):
    """A proof cannot be made: no guard here, nothing to prove, a REPORT of other tests."""


@dataclass
class ReRun:
    """One pytest process: the tests that touched `service`, with it refused or not."""

    service: str
    denied: bool
    nodeids: list[str]
    report: dict | None = None
    exit_code: int | None = None
    duration_s: float = 0.0
    log: str = ""
    out: str = ""
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.service} {'refused' if self.denied else 'control'}"

    def outcomes(self) -> Counter:
        tests = (self.report or {}).get("tests", {})
        return Counter(tests[n]["outcome"] if n in tests else "not run" for n in self.nodeids)


class Prover:
    """Plans the re-runs, runs them (N at a time), checks they ran REPORT's tests, and
    builds PROVEN. Nothing is written here: the CLI writes what execute() returns."""

    def __init__(self, report_path: str, command: list[str], services: list[str] | None,
                 jobs: int, backend: str | None, config_path: str | None, log) -> None:
        from svctrace.config import load_config
        from svctrace.guard.rules import compile_table, named_services
        self.report = load_report(report_path)
        self.report_path = report_path
        self.command = command
        self.jobs = max(1, jobs)
        self.log = log
        self.config_path = config_path
        cfg = load_config(config_path)
        smap = cfg.service_map()
        chosen, self.notes = proof.candidates(self.report, services, set(named_services(smap)))
        for note in self.notes:
            log(note)
        if not chosen:
            raise ProveError(f"nothing to prove in {report_path}: "
                             + ("; ".join(self.notes) if self.notes else
                                "no test that ran touched a service"))
        for service in chosen:  # a rule the kernel cannot match: say so before any run
            compile_table(smap, (service,))
        self.chosen = chosen
        run = self.report["run"]
        self.backend = backend or (run.get("backend") if run.get("backend") in
                                   ("ebpf", "strace", "inprocess") else None)
        self.shard = str(run.get("run_id") or "unnamed")
        self.interrupted = False
        self.runs: list[ReRun] = []
        for service, nodeids in chosen.items():
            self.runs += [ReRun(service, False, nodeids), ReRun(service, True, nodeids)]

    # -- checks before any re-run --------------------------------------------------------
    def check_guard(self) -> None:
        from svctrace.guard.kernel import Guard
        reason = Guard.unavailable_reason()
        if reason:
            raise ProveError(f"prove refuses services with the kernel guard, which cannot "
                             f"work here: {reason}")

    # -- the runs ------------------------------------------------------------------------
    def _start(self, rerun: ReRun, folder: str, index: int) -> None:
        name = f"{index:03d}-{rerun.service}-{'denied' if rerun.denied else 'control'}"
        ids = os.path.join(folder, name + ".ids")
        with open(ids, "w", encoding="utf-8") as fh:
            fh.write("".join(n + "\n" for n in rerun.nodeids))
        os.chmod(ids, 0o644)
        out = os.path.join(folder, name + ".json")
        rerun.log = os.path.join(folder, name + ".log")
        cmd = [*SVCTRACE, "run", "--quiet", "--progress", "0", "--report", out]
        if self.backend:
            cmd += ["--backend", self.backend]
        if self.config_path:
            cmd += ["--config", self.config_path]
        if rerun.denied:
            cmd += ["--deny", rerun.service]
        cmd += ["--", *self.command]
        rerun.started = time.monotonic()
        with open(rerun.log, "wb") as log:
            rerun.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL,
                                          env={**os.environ, ENV_SELECT: ids})
        rerun.report, rerun.out = None, out

    def _finish(self, rerun: ReRun) -> None:
        rerun.exit_code = rerun.proc.wait()
        rerun.duration_s = round(time.monotonic() - rerun.started, 3)
        try:
            rerun.report = load_report(rerun.out)
        except ReportError:
            rerun.report = None
        if rerun.report is None and not self.interrupted:
            try:
                with open(rerun.log, encoding="utf-8", errors="replace") as fh:
                    tail = fh.read().splitlines()[-LOG_TAIL:]
            except OSError:
                tail = []
            raise ProveError(f"the {rerun.label} re-run wrote no report (exit "
                             f"{rerun.exit_code}); its last lines:\n  " + "\n  ".join(tail))

    def _check_same_tests(self, rerun: ReRun) -> None:
        """The first control run must have run every listed test: else COMMAND selects other
        tests than the run that wrote REPORT (or REPORT comes from another suite)."""
        tests = rerun.report["tests"]
        missing = [n for n in rerun.nodeids if not tests.get(n, {}).get("ran")]
        if not missing:
            return
        if len(missing) == len(rerun.nodeids):
            raise ProveError(f"COMMAND ran none of the {counted(len(missing), 'test')} "
                             f"{self.report_path} says touched {rerun.service} (e.g. {missing[0]}): the report "
                             "comes from another suite, or COMMAND selects other tests")
        raise ProveError(f"COMMAND did not run {len(missing)} of the "
                         f"{counted(len(rerun.nodeids), 'test')} "
                         f"{self.report_path} says touched {rerun.service} (e.g. {missing[0]}):"
                         " it selects different tests than the run that wrote the report")

    def _progress(self, rerun: ReRun, done: int, total: int) -> None:
        counts = rerun.outcomes()
        listing = ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
        self.log(f"prove: {rerun.label}: {counted(len(rerun.nodeids), 'test')} in "
                 f"{rerun.duration_s:.1f} s ({listing}); {done} of {total} test re-runs done")

    def execute(self) -> dict:
        """Run every re-run (the first alone, as the check that COMMAND runs REPORT's
        tests), then return the report with proofs. Ctrl-C: the proofs so far."""
        folder = tempfile.mkdtemp(prefix="svctrace-prove-")
        owner = invoking_user()
        if owner is not None:  # the re-runs write their reports as that user
            os.chown(folder, owner.uid, owner.gid)
        total = sum(len(r.nodeids) for r in self.runs)
        done = 0
        started = time.monotonic()
        pending, running = list(self.runs), []
        try:
            while (pending or running) and not self.interrupted:
                width = 1 if done == 0 else self.jobs
                while pending and len(running) < width:
                    rerun = pending.pop(0)
                    self.log(f"prove: {rerun.label}: re-running {counted(len(rerun.nodeids), 'test')}")
                    self._start(rerun, folder, len(self.runs) - len(pending))
                    running.append(rerun)
                rerun = self._wait_any(running)
                running.remove(rerun)
                self._finish(rerun)
                if done == 0:
                    self._check_same_tests(rerun)
                done += len(rerun.nodeids)
                self._progress(rerun, done, total)
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            if running:
                self.interrupted = True  # Ctrl-C reached the re-runs too: collect them
            for rerun in running:
                try:
                    self._finish(rerun)
                except (ProveError, KeyboardInterrupt):
                    pass
            shutil.rmtree(folder, ignore_errors=True)
        return self._proven(round(time.monotonic() - started, 3))

    def _wait_any(self, running: list[ReRun]) -> ReRun:
        while True:
            for rerun in running:
                if rerun.proc.poll() is not None:
                    return rerun
            time.sleep(0.05)

    def _proven(self, took_s: float) -> dict:
        proofs: dict[str, dict] = {}
        missing = []
        for service, nodeids in self.chosen.items():
            control, denied = (next(r for r in self.runs if r.service == service
                                    and r.denied == d) for d in (False, True))
            if control.report is None and denied.report is None:
                missing.append(service)
                continue
            empty = {"tests": {}}
            proofs[service] = proof.prove_service(self.report, service, nodeids,
                                                  control.report or empty,
                                                  denied.report or empty, self.shard)
        report = proof.attach(self.report, proofs)
        plain = report["run"].get("duration_s")
        report["run"]["proof"] = {
            "command": list(self.command), "backend": self.backend,
            "services": sorted(proofs), "not_proven": missing, "notes": self.notes,
            "interrupted": self.interrupted, "duration_s": took_s,
            "plain_duration_s": plain,
            "reruns": [{"service": r.service, "denied": r.denied, "tests": len(r.nodeids),
                        "exit_code": r.exit_code, "duration_s": r.duration_s,
                        "outcomes": dict(sorted(r.outcomes().items()))}
                       for r in self.runs if r.report is not None],
        }
        return report


def timing_line(report: dict) -> str:
    """How long the proof took against the plain traced run."""
    info = report["run"]["proof"]
    plain = info.get("plain_duration_s")
    ratio = f", {info['duration_s'] / plain:.1f}x the plain run ({plain:.1f} s)" \
        if isinstance(plain, (int, float)) and plain > 0 else ""
    return (f"prove: {len(info['reruns'])} re-runs in {info['duration_s']:.1f} s{ratio}"
            + ("; interrupted: the proofs so far were kept" if info["interrupted"] else ""))
