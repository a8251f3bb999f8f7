"""`svctrace list`: the node ids of the tests related to a service, one per line (pure)."""
from __future__ import annotations

from svctrace.errors import SvctraceError


class ListError(SvctraceError):
    """No service named, or a name neither the report nor the service map knows."""


# How a test relates to a service, and where the report keeps it. `needs` is the one
# the tiers plan on: observed, inherited, declared or refused by the guard, less baseline.
RELATIONS = {
    "service": ("services", "contacted it in its own windows (observed)"),
    "needs": ("needs", "needs it"),
    "inherited": ("inherited", "inherits it from a wider-scoped fixture"),
    "denied": ("denied", "tried it and was refused by the guard"),
}


def known_services(report: dict) -> list[str]:
    """Every service name the report's tests relate to in any way."""
    names: set[str] = set()
    for test in report["tests"].values():
        for key in ("services", "needs", "inherited", "declared", "denied", "baseline"):
            names.update(test.get(key) or ())
    return sorted(names)


def list_tests(report: dict, wanted: dict[str, list[str]], map_names: set[str] = frozenset()
               ) -> list[str]:
    """Node ids, in the report's order, of the tests that relate to the services as every
    given relation says ({relation: [services]}: any of a relation's services, all given
    relations). A name neither the report nor the service map knows is an error naming the
    known ones; a known service no test relates to gives an empty list."""
    if not any(wanted.values()):
        raise ListError("name a service: --service, --needs, --inherited or --denied NAME")
    known = known_services(report)
    for names in wanted.values():
        for name in names:
            if name not in known and name not in map_names:
                raise ListError(f"no service {name!r} in the report or the service map; "
                                  f"the report knows: {', '.join(known) or 'no service'}")
    chosen = []
    for nodeid, test in report["tests"].items():
        if all(set(names) & set(test.get(RELATIONS[relation][0]) or ())
               for relation, names in wanted.items() if names):
            chosen.append(nodeid)
    return chosen


def nothing_text(wanted: dict[str, list[str]]) -> str:
    """The sentence for an empty answer: which relation found no test."""
    parts = [f"{RELATIONS[r][1].replace(' it', ' ' + ' or '.join(names), 1)}"
             for r, names in wanted.items() if names]
    return f"no test in the report {' and '.join(parts)}"
