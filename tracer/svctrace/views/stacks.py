"""The Python call site behind a contact, as text for explain and the HTML page (pure)."""
from __future__ import annotations

from svctrace.report.model import Report, TestRecord, as_report
from svctrace.words import counted

_SHOWN = 6  # frames of the deciding thread shown under the call site


_PACKAGE_ROOTS = ("/site-packages/", "/dist-packages/")


def _short(path: str) -> str:
    """A library file by its package path (psycopg2/__init__.py), the project's as given."""
    for root in _PACKAGE_ROOTS:
        if root in path:
            return path.split(root, 1)[1]
    head, sep, tail = path.rpartition("/lib/python3")
    return tail.split("/", 1)[-1] if sep and "/" in tail else path


def _where(frame: dict | None) -> str:
    if not frame:
        return "?"
    return f"{_short(frame['file'])}:{frame['line']} in {frame['function']}"


def _taken(stack: dict) -> str:
    if stack.get("how") == "in-call":
        return "taken inside the socket call"
    if stack.get("late_ms") is not None:
        return f"taken {stack['late_ms']:.0f} ms after the contact"
    held = stack.get("held_ms")
    return "process stopped at the contact" + (f", held {held:.0f} ms" if held else "")


def _deciding_frames(stack: dict) -> list[dict]:
    if stack.get("via") == "thread creation":
        for link in stack.get("created", []):
            if link.get("frames"):
                return link["frames"]
    for thread in stack.get("threads", []):
        if thread.get("role") == "contacting":
            return thread.get("frames", [])
    return []


def call_site(service: str, stack: dict) -> str:
    """One sentence: 'kafka: thread rdk:broker-1 (no Python code) was created at
    test_x.py:12 in test_y' or 'postgres: at db.py:4 in connect_db, called from test_x.py:9
    in test_y'."""
    site, test = stack.get("call_site"), stack.get("test_frame")
    if stack.get("error") and not stack.get("threads"):
        return f"{service}: no call site: {stack['error']}"
    if stack.get("via") == "thread creation":
        links = stack.get("created", [])
        first = links[0] if links else {}
        text = (f"{service}: {stack.get('contacting_thread', 'a thread with no Python code')}"
                f"; that thread was created")
        if len(links) > 1:
            text += f" (through {counted(len(links) - 1, 'more thread creation')})"
        text += f" at {_where(site)}"
        if first.get("taken_ms_before"):
            text += (f" (the stack of its creator's first thread creation then, "
                     f"{first['taken_ms_before']:.0f} ms before)")
    elif stack.get("via") == "none" or not site:
        why = stack.get("why_not") or stack.get("contacting_thread") or \
            "no frame of the project's own code on the stack"
        return f"{service}: no call site: {why}"
    else:
        text = f"{service}: at {_where(site)}"
    if test and test != site:
        text += f", called from {_where(test)}"
    return text


def stack_lines(service: str, stack: dict, indent: str = "    ") -> list[str]:
    """The call site, then the deciding thread's frames (innermost first, the project's
    own plus the library call they made) and what the main thread was doing."""
    lines = [f"{indent}{call_site(service, stack)}  [{_taken(stack)}]"]
    frames = _deciding_frames(stack)
    own = [i for i, f in enumerate(frames) if f.get("mark") != "library"]
    if own:
        start = max(0, own[0] - 1)  # the library call the project's code made, then its own
        for frame in frames[start:start + _SHOWN]:
            tag = {"test": "  (the test)", "library": "  (library)"}.get(frame.get("mark"), "")
            lines.append(f"{indent}    {_where(frame)}{tag}")
        if len(frames) > start + _SHOWN:
            lines.append(f"{indent}    … {counted(len(frames) - start - _SHOWN, 'more frame')} in the report")
    for thread in stack.get("threads", []):
        if thread.get("role") == "main" and stack.get("via") != "contacting thread":
            inner = next((f for f in thread.get("frames", []) if f.get("mark") != "library"),
                         None)
            if inner:
                lines.append(f"{indent}    main thread then: {_where(inner)}")
    return lines


def test_call_sites(report: Report | dict, nodeid: str, indent: str = "    ") -> list[str]:
    """Call-site lines for each service of a test (its own contacts, then the wider-scoped
    fixtures it inherited services from); empty when the run took no stacks."""
    report = as_report(report)
    test = report.tests.get(nodeid) or TestRecord()
    lines: list[str] = []
    for service, ev in sorted((test.evidence or {}).items()):
        stack = (ev.get("first") or {}).get("stack")
        if stack:
            lines += stack_lines(service, stack, indent)
    for service, fixtures in sorted((test.inherited or {}).items()):
        for fid in fixtures:
            fixture = report.fixtures.get(fid)
            ev = ((fixture.evidence if fixture else None) or {}).get(service)
            stack = ((ev or {}).get("first") or {}).get("stack")
            if stack:
                lines += stack_lines(f"{service} (fixture {fid})", stack, indent)
    return lines


test_call_sites.__test__ = False  # a view function, not a pytest test
