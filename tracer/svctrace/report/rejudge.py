"""A report's destinations judged again with the current service map (pure): a rule added
since the run names what the report still calls by its address."""
from __future__ import annotations

import copy

from svctrace.events import Destination
from svctrace.join.evidence import MAX_KEPT
from svctrace.join.services import ServiceMap


def parse_label(label: str) -> Destination | None:
    """The destination a label names ("tcp:10.0.0.5:8080", "udp:[::1]:53", "unix:/run/x"),
    or None for text that is no label (a service's name)."""
    kind, sep, rest = label.partition(":")
    if not sep or not rest:
        return None
    if kind == "unix":
        return Destination("unix", "unix", rest)
    if kind not in ("tcp", "udp", "other"):
        return None
    host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        return Destination("inet6", kind, host[1:-1], int(port))
    return Destination("inet", kind, host, int(port))


class Rejudge:
    """Names of a report's services under `smap`; `renamed` counts what changed and where
    the report kept too few destinations to be sure."""

    def __init__(self, smap: ServiceMap) -> None:
        self.smap = smap
        self.renamed: dict[tuple[str, str | None], set[str]] = {}  # (old, new) -> tests
        self.partial: set[str] = set()   # tests whose evidence kept MAX_KEPT destinations

    def names(self, service: str, evidence: dict | None, nodeid: str) -> set[str]:
        """What `service` is called now, judged from its label or its kept destinations."""
        own = parse_label(service)
        if own is not None:
            labels, complete = [service], True
        else:
            labels = list((evidence or {}).get("destinations") or ())
            complete = 0 < len(labels) < MAX_KEPT
        found: set[str] = set()
        for label in labels:
            dest = parse_label(label)
            name = self.smap.classify(dest) if dest is not None else service
            if name == label and own is None:
                # No rule names it now, yet one did in the run: most likely tiers was given
                # another config than the run had; the run's name is the better guess.
                name = service
            if name is not None:
                found.add(name)
        if not complete:
            if labels and found != {service}:
                self.partial.add(nodeid)
            found.add(service)  # what the report cannot show stays as it was
        for new in (found - {service}) or ([None] if service not in found else []):
            self.renamed.setdefault((service, new), set()).add(nodeid)
        return found

    def report(self, report: dict, baseline: set[str] | None) -> dict:
        """A copy of `report` whose tests' services, inherited services and needs are named
        by the current map (evidence keeps the run's names: it is what was seen). Baseline
        None: the run's own (no config of its own was found)."""
        out = copy.deepcopy(report)
        if baseline is None:
            baseline = set(report.get("run", {}).get("baseline", []))
        fixtures = out.get("fixtures", {})
        for nodeid, test in out["tests"].items():
            evidence = test.get("evidence", {})
            observed: set[str] = set()
            for service in test.get("services", []):
                observed |= self.names(service, evidence.get(service), nodeid)
            inherited: dict[str, set[str]] = {}
            for service, fids in test.get("inherited", {}).items():
                for fid in fids:
                    ev = fixtures.get(fid, {}).get("evidence", {}).get(service)
                    for name in self.names(service, ev, nodeid):
                        inherited.setdefault(name, set()).add(fid)
            union = (observed | set(inherited) | set(test.get("declared", []))
                     | set(test.get("denied", [])))
            test["services"] = sorted(observed)
            test["inherited"] = {k: sorted(v) for k, v in sorted(inherited.items())}
            test["needs"] = sorted(union - baseline)
            test["baseline"] = sorted(union & baseline)
        return out

    def lines(self) -> list[str]:
        """What changed, one line per old and new name, and what could not be judged."""
        out = []
        for (old, new), tests in sorted(self.renamed.items(), key=lambda i: (i[0][0],
                                                                             i[0][1] or "")):
            now = f"is now {new}" if new else "is now ignored (noise or an `ignore` rule)"
            out.append(f"{old} {now} by the current service rules "
                       f"({len(tests)} test{'' if len(tests) == 1 else 's'})")
        if self.partial:
            n = len(self.partial)
            out.append(f"{n} test{'' if n == 1 else 's'} kept only {MAX_KEPT} destinations "
                       "of a service in the report: judged on those, "
                       f"{'its' if n == 1 else 'their'} other destinations keep the run's "
                       "names (run svctrace again to judge every one)")
        return out
