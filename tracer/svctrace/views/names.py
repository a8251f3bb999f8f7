"""How the views say a destination's host names and internet reach (pure: report dicts in,
text out): "cache.ci:16379 (127.0.0.1, from a DNS answer)"."""
from __future__ import annotations

from svctrace.report.model import Report, as_report

HOW = {"dns": "a DNS answer", "nss": "getaddrinfo (hosts file or nss)"}


def _split(label: str) -> tuple[str, str, str] | None:
    """("tcp", "127.0.0.1", "16379") of an inet label, or None (unix, other)."""
    transport, sep, rest = label.partition(":")
    if not sep or transport not in ("tcp", "udp", "other"):
        return None
    host, sep, port = rest.rpartition(":")
    return (transport, host.strip("[]"), port) if sep else None


def where_text(label: str, entry: dict) -> str:
    """A destination as a person reads it: by the name the test used, with its address
    and how the name was learned; the label itself when no name is known."""
    names = entry.get("names") or []
    parts = _split(label)
    internet = ", internet" if entry.get("internet") else ""
    if not names or parts is None:
        return label + (" (internet)" if internet else "")
    _, address, port = parts
    how = " and ".join(sorted({HOW.get(n.get("how"), n.get("how", "?")) for n in names}))
    if len(names) == 1:
        via = names[0].get("aliases")
        alias = f" via CNAME {' -> '.join(via)}" if via else ""
        return f"{names[0]['name']}:{port} ({address}, name from {how}{alias}{internet})"
    listed = ", ".join(n["name"] for n in names)
    return f"{address}:{port} (ambiguous: one of {listed}, names from {how}{internet})"


def internet_tests(report: Report | dict) -> dict[str, list[str]]:
    """{test: the hosts it reached on the internet (by name where known)}."""
    found: dict[str, list[str]] = {}
    for nodeid, test in as_report(report).tests.items():
        hosts: list[str] = []
        for group in (test.evidence, test.failed_probes):
            for evidence in (group or {}).values():
                for label, entry in (evidence.get("by_destination") or {}).items():
                    if entry.get("internet"):
                        text = where_text(label, entry).replace(", internet", "")
                        if text not in hosts:
                            hosts.append(text)
        if hosts:
            found[nodeid] = hosts
    return found


def internet_lines(report: Report | dict, verbose: bool = False, shown: int = 5) -> list[str]:
    """The summary's lines about tests that reach the internet (flaky by nature)."""
    found = internet_tests(report)
    if not found:
        return []
    lines = [f"  {len(found)} tests reach the internet (a test that needs it is a flaky "
             "test waiting to happen):"]
    items = sorted(found.items())
    for nodeid, hosts in items if verbose else items[:shown]:
        lines.append(f"    {nodeid}: {', '.join(hosts)}")
    if not verbose and len(items) > shown:
        lines.append(f"    ... {len(items) - shown} more (-v lists them)")
    return lines


def service_name_lines(report: Report | dict, limit: int = 8) -> list[str]:
    """"redis at cache.ci:16379 (127.0.0.1, ...)": the services known by host name."""
    seen: dict[str, list[str]] = {}
    for test in as_report(report).tests.values():
        for service, evidence in (test.evidence or {}).items():
            for label, entry in (evidence.get("by_destination") or {}).items():
                if entry.get("names"):
                    text = where_text(label, entry)
                    known = seen.setdefault(service, [])
                    if text not in known and len(known) < 3:
                        known.append(text)
    if not seen:
        return []
    items = sorted(seen.items())
    text = "; ".join(f"{service} at {', '.join(where)}" for service, where in items[:limit])
    more = f"; {len(items) - limit} more" if len(items) > limit else ""
    return [f"  services by the names tests used: {text}{more}"]
