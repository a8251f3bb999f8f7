"""Builds, writes, reads and summarises the `svctrace-report/1` JSON (pure apart from file I/O)."""
from __future__ import annotations

import fnmatch
import json
import os
import uuid
from collections import Counter
from pathlib import Path

from svctrace import REPORT_SCHEMA, __version__
from svctrace.attribution import Attribution, Contact, TestRecord
from svctrace.config import Config
from svctrace.errors import SvctraceError
from svctrace.events import TEST_PHASES, RunInfo
from svctrace.jsonfile import read_versioned, write_atomic


class ReportError(SvctraceError):
    """A report file is missing, unreadable or of another schema."""


def _contact_json(contact: Contact) -> dict:
    return {
        "connects": contact.connects,
        "sends": contact.sends,
        "failed_connects": contact.failed_connects,
        "background": contact.background,
        "threads": sorted(t for t in contact.threads if t),
        "destinations": sorted(contact.destinations),
        "fixtures": sorted(contact.fixtures),
        "gaps": sorted(contact.gaps),
        "first": contact.first,
    }


def _by_phase(per_phase: dict[str, dict[str, Contact]]) -> dict[str, dict]:
    """{service: its evidence merged over the phases it was seen in, with those phases}."""
    out = {}
    for service in sorted(set().union(*map(set, per_phase.values()))):
        where = [p for p in TEST_PHASES if service in per_phase[p]]
        merged = Contact()
        for p in where:
            merged.merge(per_phase[p][service])
        out[service] = {"phases": where, **_contact_json(merged)}
    return out


def _outcome(test: TestRecord) -> str:
    """One outcome per test, as pytest's terminal summary counts it: passed, failed, error
    (setup or teardown failed), skipped, xfailed, xpassed; interrupted (started, never
    finished); not run (collected only). Phase outcomes are pytest's own reports."""
    if not test.ran:
        return "not run"
    outcomes = test.outcomes
    if "teardown" not in outcomes or "interrupted" in outcomes.values():
        return "interrupted"
    setup, call = outcomes.get("setup"), outcomes.get("call")
    if "failed" in (setup, outcomes["teardown"]):
        return "error"
    if setup in ("skipped", "xfailed"):
        return setup
    # No call: --setup-only, or a lost marker line: say what is known.
    return call or setup or "passed"


def declared_services(test: TestRecord, cfg: Config) -> list[str]:
    """Services the static rules in [tool.svctrace.declare] give this test."""
    info = test.info
    found: set[str] = set()
    declare = cfg.declare
    path = (info.path if info and info.path else test.nodeid.split("::")[0])
    for glob, services in declare.get("paths", {}).items():
        if fnmatch.fnmatch(path, glob):
            found.update(services)
    if info:
        argnames = {fid.rsplit("::", 1)[-1] for fid in info.fixtures}
        for kind, names in (("markers", set(info.markers)), ("fixtures", argnames),
                            ("bases", set(info.bases))):
            for name, services in declare.get(kind, {}).items():
                if name in names:
                    found.update(services)
    return sorted(found)


def _incidental(tests: dict[str, dict], records: dict[str, TestRecord], share: float) -> list:
    """Services touched by most tests only in teardown or only inside one fixture."""
    ran = [t for t in records.values() if t.ran]
    if not ran:
        return []
    reasons: dict[str, Counter] = {}
    for test in ran:
        for service in tests[test.nodeid]["services"]:
            contacts = [(p, test.phases[p][service]) for p in TEST_PHASES
                        if service in test.phases[p]]
            counter = reasons.setdefault(service, Counter())
            if all(p == "teardown" for p, _ in contacts):
                counter["phase teardown"] += 1
            fixtures = set().union(*(c.fixtures for _, c in contacts))
            if len(fixtures) == 1 and not any(c.outside_fixtures for _, c in contacts):
                counter[f"fixture {next(iter(fixtures))}"] += 1
    found = []
    for service, counter in sorted(reasons.items()):
        # on a tie, naming the fixture tells the user more than naming the phase
        ranked = sorted(counter.items(), key=lambda i: (-i[1], not i[0].startswith("fixture")))
        for via, count in ranked[:1]:
            if count / len(ran) >= share:
                found.append({"service": service, "via": via,
                              "share": round(count / len(ran), 3), "tests": count})
    return found


def build_report(att: Attribution, run: RunInfo, cfg: Config, stats: dict | None = None) -> dict:
    """The report dict (schema svctrace-report/1); see README "Report format"."""
    baseline = set(cfg.baseline)
    tests: dict[str, dict] = {}
    for nodeid, test in att.tests.items():
        phases = {p: sorted(test.phases[p]) for p in TEST_PHASES}
        observed = sorted(set().union(*map(set, phases.values())))
        evidence = _by_phase(test.phases)
        inherited: dict[str, list[str]] = {}
        for fid in (test.info.fixtures if test.info else ()):
            for service in att.fixture_services.get(fid, {}):
                inherited.setdefault(service, []).append(fid)
        declared = declared_services(test, cfg)
        union = set(observed) | set(inherited) | set(declared)
        tests[nodeid] = {
            "services": observed,
            "phases": phases,
            "outcome": _outcome(test),
            "ran": test.ran,
            "duration_s": round(sum(test.durations.values()), 6),
            "worker": test.worker,
            "evidence": evidence,
            "inherited": {k: sorted(v) for k, v in sorted(inherited.items())},
            "declared": declared,
            "baseline": sorted(union & baseline),
            "needs": sorted(union - baseline),
            "failed_probes": _by_phase(test.probes),
        }
    unattributed = []
    for key in sorted(set(att.unattributed) | set(att.unattributed_probes)):
        services = att.unattributed.get(key, {})
        probes = att.unattributed_probes.get(key, {})
        unattributed.append({"reason": key[0], "detail": key[1], "services": sorted(services),
                             "evidence": {s: _contact_json(c) for s, c in sorted(services.items())},
                             "failed_probes": {s: _contact_json(c)
                                               for s, c in sorted(probes.items())}})
    stats = dict(stats or {})
    report = {
        "schema": REPORT_SCHEMA,
        "run": {
            "svctrace_version": __version__,
            "run_id": uuid.uuid4().hex,  # lets merge count each run once, however often given
            "backend": run.backend,
            "blind_spots": list(run.blind_spots),
            "command": list(run.command),
            "exit_code": run.exit_code,
            "lost_events": int(stats.pop("lost_events", 0) or 0),
            "events": att.counts,
            "backend_stats": stats,
            "config": str(cfg.path) if cfg.path else None,
            "baseline": sorted(baseline),
            **run.extra,
        },
        "tests": dict(sorted(tests.items())),
        "unattributed": unattributed,
        "fixtures": {fid: {"scope": att.fixture_scopes.get(fid, "?"),
                           "services": sorted(svcs),
                           "evidence": {s: _contact_json(c) for s, c in sorted(svcs.items())}}
                     for fid, svcs in sorted(att.fixture_services.items())},
    }
    report["summary"] = summarize(report, _incidental(tests, att.tests, cfg.incidental_share))
    return report


def summarize(report: dict, incidental: list | None = None) -> dict:
    tests = report["tests"]
    per_service = Counter(s for t in tests.values() for s in t["services"])
    sets = Counter(tuple(t["needs"]) for t in tests.values() if t["ran"])
    return {
        "tests": len(tests),
        "tests_ran": sum(1 for t in tests.values() if t["ran"]),
        "services": dict(sorted(per_service.items())),
        "service_sets": [{"needs": list(k), "tests": v} for k, v in sets.most_common()],
        "incidental": incidental if incidental is not None
        else report.get("summary", {}).get("incidental", []),
    }


def write_report(report: dict, path: str | os.PathLike) -> Path:
    """Write atomically: a reader never sees half a report, a crash never leaves one."""
    # No indent: json's C encoder only runs without it (10x faster on large suites);
    # `python -m json.tool` pretty-prints for a person.
    return write_atomic(json.dumps(report, separators=(",", ":")) + "\n", path)


def load_report(path: str | os.PathLike) -> dict:
    return read_versioned(path, REPORT_SCHEMA, "report", ReportError)


def format_summary(report: dict, path: str | None = None) -> str:
    """The short terminal summary printed at the end of a run."""
    run, summary = report["run"], report["summary"]
    lines = [f"svctrace: backend {run['backend']}, {summary['tests_ran']} tests ran, "
             f"{run['lost_events']} lost events"
             + (f", report {path}" if path else "")]
    if run["lost_events"]:
        lines.append(f"  WARNING: {run['lost_events']} events were lost: services may be "
                     "missing (raise ringbuf_pages in [tool.svctrace])")
    if summary["services"]:
        lines.append("  tests touching each service: " + ", ".join(
            f"{s} {n}" for s, n in sorted(summary["services"].items(), key=lambda i: -i[1])))
    if summary["service_sets"]:
        lines.append("  tests by needed service set:")
    for entry in summary["service_sets"][:12]:
        lines.append(f"    {entry['tests']:6d}  {' + '.join(entry['needs']) or '(none)'}")
    if report["unattributed"]:
        reasons = Counter()
        for entry in report["unattributed"]:
            reasons[entry["reason"]] += 1
        lines.append("  traffic outside tests: " + ", ".join(
            f"{r} ({n})" for r, n in sorted(reasons.items())) + " — see report 'unattributed'")
    for item in summary.get("incidental", []):
        lines.append(f"  baseline candidate: {item['service']} in {item['share']:.0%} of tests, "
                     f"only via {item['via']} (mark it baseline in [tool.svctrace] if not needed)")
    for note in run.get("notes", []) + run.get("backend_stats", {}).get("notes", []):
        lines.append(f"  note: {note}")
    for spot in run.get("blind_spots", []):
        lines.append(f"  blind spot: {spot}")
    return "\n".join(lines)
