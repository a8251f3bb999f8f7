"""The terminal summary of a report (printed at the end of `svctrace run`, `svctrace summary`)."""
from __future__ import annotations

from collections import Counter


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
