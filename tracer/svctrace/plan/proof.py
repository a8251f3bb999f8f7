"""Proof that a test needs a service (pure): which tests to re-run per service, the verdict
of a denied run against its control run, the proven needs tiers plan, and how proofs from
several shards join."""
from __future__ import annotations

from collections import Counter

from svctrace.report.model import NEEDED, NOT_NEEDED, UNPROVEN, TestRecord

VERDICTS = (NEEDED, NOT_NEEDED, UNPROVEN)
FAILED = ("failed", "error")


def touched(test: dict) -> set[str]:
    """The services a test touched: observed in its windows, inherited from a wider-scoped
    fixture it used, or tried and refused by a guard. Declared ones were not touched."""
    return {*test.get("services", ()), *test.get("inherited", {}), *test.get("denied", ())}


def candidates(report: dict, services: list[str] | None, deniable: set[str]) -> tuple[
        dict[str, list[str]], list[str]]:
    """({service: node ids that ran and touched it, in report order}, notes on services left
    out). `services` limits them (None: every touched one the guard can refuse)."""
    per: dict[str, list[str]] = {}
    for nodeid, test in report["tests"].items():
        if test.get("ran"):
            for service in touched(test):
                per.setdefault(service, []).append(nodeid)
    notes = []
    wanted = sorted(per) if services is None else list(dict.fromkeys(services))
    chosen = {}
    for service in wanted:
        if service not in per:
            notes.append(f"{service}: no test of the report touched it, nothing to prove")
        elif service not in deniable:
            notes.append(f"{service}: the service map names no such service (an address "
                         "no rule names), so the guard cannot refuse it")
        else:
            chosen[service] = per[service]
    return chosen, notes


def verdict(service: str, traced: str | None, control: str | None,
            denied: str | None) -> tuple[str, str]:
    """(verdict, why) for one test and service from its outcomes in the traced run, the
    control run (nothing refused) and the denied run (`service` refused)."""
    if control is None or control in ("not run", "interrupted"):
        return UNPROVEN, "the control run did not finish it"
    if control != "passed":
        return UNPROVEN, f"{control} in the control run too, with nothing refused"
    if traced in FAILED:
        return UNPROVEN, f"flaky: {traced} in the traced run, passed in the control run"
    if denied is None or denied in ("not run", "interrupted"):
        return UNPROVEN, f"the run with {service} refused did not finish it"
    if denied == "passed":
        return NOT_NEEDED, f"passed with {service} refused"
    if denied in FAILED:
        return NEEDED, f"{denied} with {service} refused, passed in the control run"
    return UNPROVEN, f"{denied} with {service} refused"


def first_refusal(test: dict | None, service: str) -> dict | None:
    """The denied run's first refused contact with `service` (thread, destination, phase,
    call site when taken), and how many attempts were refused."""
    evidence = ((test or {}).get("denied_evidence") or {}).get(service)
    if not evidence:
        return None
    first = dict(evidence.get("first") or {})
    first["refusals"] = evidence.get("connects", 0) + evidence.get("sends", 0)
    return first


def prove_service(report: dict, service: str, nodeids: list[str], control: dict,
                  denied: dict, shard: str) -> dict[str, dict]:
    """{node id: proof record} for one service from the control and denied runs' reports."""
    out = {}
    for nodeid in nodeids:
        traced = report["tests"][nodeid].get("outcome")
        c_test, d_test = control["tests"].get(nodeid), denied["tests"].get(nodeid)
        c_out = c_test.get("outcome") if c_test else None
        d_out = d_test.get("outcome") if d_test else None
        what, why = verdict(service, traced, c_out, d_out)
        out[nodeid] = {"verdict": what, "why": why, "traced": traced, "control": c_out,
                       "denied_run": d_out, "refused": first_refusal(d_test, service),
                       "shards": {shard: {"verdict": what, "why": why}}}
    return out


def unfinished(service: str, nodeids: list[str], report: dict, shard: str,
               why: str) -> dict[str, dict]:
    """Proof records for tests a stopped prove never re-ran (Ctrl-C): unproven, saying so."""
    return {n: {"verdict": UNPROVEN, "why": why, "traced": report["tests"][n].get("outcome"),
                "control": None, "denied_run": None, "refused": None,
                "shards": {shard: {"verdict": UNPROVEN, "why": why}}} for n in nodeids}


def attach(report: dict, proofs: dict[str, dict[str, dict]]) -> dict:
    """The report with `proof` ({service: record}) and `needs_proof` ({service: verdict})
    on every test that has a proof; `proofs` is {service: {node id: record}}."""
    for service, records in proofs.items():
        for nodeid, record in records.items():
            test = report["tests"][nodeid]
            test.setdefault("proof", {})[service] = record
    for test in report["tests"].values():
        if "proof" in test:
            test["proof"] = dict(sorted(test["proof"].items()))
            test["needs_proof"] = {s: r["verdict"] for s, r in test["proof"].items()}
    return report


def join_proof(record: dict) -> dict:
    """A proof record whose `shards` came from several inputs (merge): one decisive verdict
    stands; needed in one shard and not needed in another is a conflict, unproven, with both
    shards named; shards that proved nothing do not undo one that did."""
    shards = record.get("shards") or {}
    by = {v: sorted(s for s, r in shards.items() if r.get("verdict") == v) for v in VERDICTS}
    record = {k: v for k, v in record.items() if k != "conflict"}
    if by[NEEDED] and by[NOT_NEEDED]:
        return {**record, "verdict": UNPROVEN,
                "why": f"conflict: needed in shard {', '.join(by[NEEDED])}, not needed in "
                       f"shard {', '.join(by[NOT_NEEDED])}",
                "conflict": {NEEDED: by[NEEDED], NOT_NEEDED: by[NOT_NEEDED]}}
    what = NEEDED if by[NEEDED] else NOT_NEEDED if by[NOT_NEEDED] else UNPROVEN
    if not by[what]:
        return {**record, "verdict": what}
    return {**record, "verdict": what, "why": shards[by[what][0]].get("why")}


def proven_needs(test: dict) -> list[str]:
    """What a test (its JSON object) needs once proofs count: TestRecord.proven_needs."""
    return TestRecord.from_dict(test).proven_needs


def has_proofs(report: dict) -> bool:
    return any(t.get("needs_proof") for t in report.get("tests", {}).values())


def verdict_counts(report: dict) -> dict[str, Counter]:
    """{service: Counter(verdict)} over every proven test."""
    out: dict[str, Counter] = {}
    for test in report.get("tests", {}).values():
        for service, what in (test.get("needs_proof") or {}).items():
            out.setdefault(service, Counter())[what] += 1
    return dict(sorted(out.items()))


def verdict_text(service: str, record: dict) -> str:
    """One line a reviewer reads: `redis: used, not needed (passed with redis refused)`."""
    what = record.get("verdict")
    word = {NEEDED: "needed", NOT_NEEDED: "not needed", UNPROVEN: "unproven"}.get(what, what)
    text = f"{service}: used, {word} ({record.get('why')})"
    refused = record.get("refused")
    if refused:
        text += (f"; first refused: {refused.get('destination')} from thread "
                 f"{refused.get('thread')} in {refused.get('phase') or 'no phase'}")
    return text
