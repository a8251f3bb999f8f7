"""The `svctrace-report/1` report built from attribution and analysis (pure: report.files does I/O)."""
from __future__ import annotations

import operator
import uuid

from svctrace import REPORT_SCHEMA, __version__
from svctrace.join import analysis
from svctrace.join.attribution import Attribution
from svctrace.join.evidence import Contact
from svctrace.config import Config
from svctrace.events import TEST_PHASES, RunInfo


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
        "by_destination": {label: {**entry, "errors": dict(sorted(entry["errors"].items()))}
                           for label, entry in sorted(contact.by_destination.items())},
        "processes": {str(pid): {**proc, "threads": sorted(t for t in proc["threads"] if t)}
                      for pid, proc in sorted(contact.processes.items())},
    }


_PHASES_OF = operator.itemgetter(*TEST_PHASES)


def _by_phase(per_phase: dict[str, dict[str, Contact]]) -> dict[str, dict]:
    """{service: its evidence merged over the phases it was seen in, with those phases}."""
    setup, call, teardown = _PHASES_OF(per_phase)
    if not (setup or call or teardown):  # most tests, for probes and refusals
        return {}
    out = {}
    for service in sorted({*setup, *call, *teardown}):
        where = [p for p in TEST_PHASES if service in per_phase[p]]
        if len(where) == 1:  # seen in one phase: its contact is the merge
            merged = per_phase[where[0]][service]
        else:
            merged = Contact()
            for p in where:
                merged.merge(per_phase[p][service])
        out[service] = {"phases": where, **_contact_json(merged)}
    return out


def build_report(att: Attribution, run: RunInfo, cfg: Config, stats: dict | None = None) -> dict:
    """The report dict (schema svctrace-report/1); see README "Report format"."""
    baseline = set(cfg.baseline)
    patterns = tuple(b for b in baseline if any(c in b for c in "*?["))
    tests: dict[str, dict] = {}
    declared_memo: dict = {}
    for nodeid, test in att.tests.items():
        phases = {p: sorted(test.phases[p]) for p in TEST_PHASES}
        observed = sorted({*phases["setup"], *phases["call"], *phases["teardown"]})
        inherited = analysis.inherited_services(test, att)
        declared = analysis.declared_services(test, cfg, declared_memo)
        denied = sorted({s for phase in test.denied.values() for s in phase})
        started = analysis.suite_started(test, att, inherited)
        needs, touched_baseline = analysis.needs(
            [s for s in observed if s not in started],
            {s: f for s, f in inherited.items() if s not in started}, declared, baseline,
            denied, patterns)
        tests[nodeid] = {
            "services": observed,
            "phases": phases,
            "outcome": analysis.outcome(test),
            "ran": test.ran,
            "duration_s": round(sum(test.durations.values()), 6),
            "worker": test.worker,
            "evidence": _by_phase(test.phases),
            "inherited": inherited,
            "declared": declared,
            "baseline": touched_baseline,
            "needs": needs,
            "suite_started": started,                 # served by the suite's own listeners
            "failed_probes": _by_phase(test.probes),
            "denied": denied,                         # refused by the guard
            "denied_evidence": _by_phase(test.denied),
            "ignored": {why: dict(sorted(labels.items()))
                        for why, labels in sorted(test.ignored.items())},
            # C clients the in-process backend cannot see, loaded in the test's process:
            # what it reached through them is missing from this answer
            "unseen_clients": list(test.info.unseen) if test.info else [],
        }
        if test.lost:  # the backend lost records while it ran: its answer may be partial
            tests[nodeid].update(lost_events=test.lost, incomplete=True)
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
            # host name -> the addresses the traced tree resolved it to, and how
            "names": att.names.summary(),
            "name_lookups": dict(att.names.counts),
            **run.extra,
        },
        "tests": tests,  # pytest's order (collection, then run): what users diff
        "unattributed": unattributed,
        "destinations": att.destinations,
        "fixtures": {fid: {"scope": att.fixture_scopes.get(fid, "?"),
                           "services": sorted(svcs),
                           "tests": {nodeid: [p for p in TEST_PHASES if p in phases]
                                     for nodeid, phases in sorted(
                                         att.fixture_tests.get(fid, {}).items())},
                           "evidence": {s: _contact_json(c) for s, c in sorted(svcs.items())}}
                     for fid, svcs in sorted(att.fixture_services.items())},
    }
    report["summary"] = analysis.summarize(
        report, analysis.incidental(tests, att.tests, cfg.incidental_share))
    return report
