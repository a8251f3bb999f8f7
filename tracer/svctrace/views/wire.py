"""How svctrace knows what a destination is, in words, from report["destinations"] (pure)."""
from __future__ import annotations

from svctrace.report.model import Report, as_report


def _where(label: str) -> str:
    """"tcp:127.0.0.1:16379" -> "127.0.0.1:16379"."""
    return label.split(":", 1)[1] if label.split(":", 1)[0] in ("tcp", "udp") else label


def how_known(destinations: dict | None, label: str) -> str | None:
    """"redis at 127.0.0.1:16379, recognised from a RESP command (HELLO)", or None when
    the run's traffic said nothing of this destination."""
    entry = (destinations or {}).get(label)
    if not entry:
        return None
    where = _where(label)
    if entry.get("protocol") == "ambiguous":
        text = (f"protocol ambiguous at {where} ({entry.get('recognised_from')}): "
                "named by port or address")
    else:
        text = (f"{entry.get('service') or entry.get('protocol')} at {where}, recognised "
                f"from {entry.get('recognised_from')}")
        hosts = entry.get("hosts") or []
        if len(hosts) > 1:
            text += f" (hosts asked for: {', '.join(hosts)})"
    if entry.get("suite_listener"):
        text += "; a listener of the traced suite itself"
    return text


WIRE_SHOWN = 4  # destinations the short summary names


def wire_lines(report: Report | dict, verbose: bool = False) -> list[str]:
    """Summary lines: destinations named from their own traffic, and services the suite
    started itself."""
    report = as_report(report)
    destinations = report.destinations
    lines = []
    if destinations:
        texts = [how_known(destinations, label) for label in destinations]
        shown = texts if verbose else texts[:WIRE_SHOWN]
        more = len(texts) - len(shown)
        lines.append("  named from their traffic: " + "; ".join(shown)
                     + (f"; {more} more (-v, or the report's 'destinations')" if more else ""))
    started: dict[str, int] = {}
    for test in report.tests.values():
        for service in test.suite_started:
            started[service] = started.get(service, 0) + 1
    if started:
        lines.append("  started by the suite itself (its own listeners; not needs): "
                     + ", ".join(f"{s} in {n} tests" for s, n in sorted(started.items())))
    return lines
