"""The product's rules over attributed tests (pure): outcome, what a test needs, what is
declared, baseline candidates, and the run's summary numbers. Reports, merge and every
view read these; none of them decides anything of its own."""
from __future__ import annotations

import fnmatch
from collections import Counter

from svctrace.join.attribution import Attribution, TestRecord
from svctrace.config import Config
from svctrace.events import TEST_PHASES


def outcome(test: TestRecord) -> str:
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


def unfinished_phase(test: TestRecord) -> str | None:
    """The phase a test was in when its pytest process ended without finishing it (os._exit,
    a segfault, SIGKILL), or None. A phase that ends gets an outcome, also on Ctrl-C."""
    if not test.ran or "teardown" in test.outcomes or "interrupted" in test.outcomes.values():
        return None  # finished, or stopped by Ctrl-C (pytest ended the phase itself)
    if "call" in test.outcomes:
        return "teardown"
    if "setup" in test.outcomes:
        return "call" if test.outcomes["setup"] == "passed" else "teardown"
    return "setup"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "the command's exit status is unknown"
    if code > 128:
        return f"the command was killed by signal {code - 128}"
    return f"the command exited {code}"


def interrupted_notes(tests: dict[str, TestRecord], exit_code: int | None,
                      shown: int = 5) -> list[str]:
    """One note per test whose pytest process ended mid-test: which test, which phase, and
    the exit status; then how many collected tests never ran."""
    cut = [(nodeid, unfinished_phase(test), test.pid) for nodeid, test in tests.items()]
    cut = [entry for entry in cut if entry[1]]
    notes = [f"{nodeid} was in its {phase} phase when its pytest process"
             + (f" (pid {pid})" if pid else "") + f" ended; {_exit_text(exit_code)}"
             for nodeid, phase, pid in cut[:shown]]
    if len(cut) > shown:
        notes.append(f"{len(cut) - shown} more tests were cut off the same way")
    not_run = sum(1 for test in tests.values() if not test.ran)
    if cut and not_run:
        notes.append(f"{not_run} collected {'test' if not_run == 1 else 'tests'} did not run")
    return notes


def declared_services(test: TestRecord, cfg: Config, memo: dict | None = None) -> list[str]:
    """Services the static rules in [tool.svctrace.declare] give this test. memo: a dict
    kept across the tests of one report (most tests share a file and their fixtures)."""
    declare = cfg.declare
    if not declare:  # no rules: most configurations
        return []
    info = test.info
    path = (info.path if info and info.path else test.nodeid.split("::")[0])
    if memo is None:
        return _declared(declare, path, info)
    key = (path, info.fixtures, info.markers, info.bases) if info else (path,)
    try:
        found = memo.get(key)
    except TypeError:  # a TestInfo made with lists, not tuples
        return _declared(declare, path, info)
    if found is None:
        found = memo[key] = _declared(declare, path, info)
    return list(found)


def _declared(declare: dict, path: str, info) -> list[str]:
    found: set[str] = set()
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


def inherited_services(test: TestRecord, att: Attribution) -> dict[str, list[str]]:
    """{service: [fixture ids]} from the wider-scoped fixtures this test used. Inferred."""
    inherited: dict[str, list[str]] = {}
    for fid in (test.info.fixtures if test.info else ()):
        for service in att.fixture_services.get(fid, {}):
            inherited.setdefault(service, []).append(fid)
    return {k: sorted(v) for k, v in sorted(inherited.items())}


def suite_started(test: TestRecord, att: Attribution, inherited: dict) -> list[str]:
    """Services this test reached only at listeners of the traced tree (a server a fixture
    started itself): observed, but no tier has to start them. Inferred from where each
    contact went (att.destinations)."""
    own = {label for label, d in att.destinations.items() if d.get("suite_listener")}
    if not own:
        return []
    contacts: dict[str, list] = {}
    for phase in TEST_PHASES:
        for service, contact in test.phases[phase].items():
            contacts.setdefault(service, []).append(contact)
    for service, fids in inherited.items():
        for fid in fids:
            contacts.setdefault(service, []).append(att.fixture_services[fid][service])
    return sorted(service for service, found in contacts.items()
                  if all(c.destinations and c.destinations <= own for c in found))


def needs(observed: list[str], inherited: dict, declared: list[str], baseline: set[str],
          denied: list[str] = (), patterns: tuple[str, ...] = ()
          ) -> tuple[list[str], list[str]]:
    """(needs, baseline touched): observed, inherited, declared and denied (the guard
    refused it: the test tried it), less the baseline. patterns: baseline globs, for
    services known by host name ("tcp:*.internal:*")."""
    union = set(observed) | set(inherited) | set(declared) | set(denied)
    if patterns:
        baseline = baseline | {s for s in union
                               if any(fnmatch.fnmatchcase(s, p) for p in patterns)}
    return sorted(union - baseline), sorted(union & baseline)


def incidental(tests: dict[str, dict], records: dict[str, TestRecord], share: float) -> list:
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


def summarize(report: dict, incidental: list | None = None) -> dict:
    """The report's `summary`: tests, services per test, needed service sets."""
    tests = report["tests"]
    per_service = Counter(s for t in tests.values() for s in t["services"])
    sets = Counter(tuple(t["needs"]) for t in tests.values() if t["ran"])
    return {
        "tests": len(tests),
        "tests_ran": sum(1 for t in tests.values() if t["ran"]),
        "services": dict(sorted(per_service.items())),
        # ties by the set, not by the first test's place: the same for any test order
        "service_sets": [{"needs": list(k), "tests": v}
                         for k, v in sorted(sets.items(), key=lambda i: (-i[1], i[0]))],
        "incidental": incidental if incidental is not None
        else report.get("summary", {}).get("incidental", []),
        "denied": denied_tests(tests),
    }


def denied_tests(tests: dict[str, dict]) -> list[dict]:
    """The tests that tried a service the guard refused: one entry per test and service,
    with the first refusal's evidence (thread, destination, phase)."""
    found = []
    for nodeid, test in sorted(tests.items()):
        for service, evidence in sorted(test.get("denied_evidence", {}).items()):
            first = evidence.get("first") or {}
            found.append({"test": nodeid, "service": service,
                          "refusals": evidence.get("connects", 0) + evidence.get("sends", 0),
                          "thread": first.get("thread"), "destination":
                          first.get("destination"), "phase": first.get("phase")})
    return found
