"""The report and the plan as typed records: the one way in and out of their JSON (pure)."""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, Iterable, Mapping

from svctrace import REPORT_SCHEMA
from svctrace.errors import SvctraceError

PLAN_SCHEMA = "svctrace-plan/1"
# A test's `needs_proof` verdicts per service (svctrace prove); plan.proof decides them.
NEEDED, NOT_NEEDED, UNPROVEN = "needed", "not_needed", "unproven"
GRANULARITIES = ("test", "class", "file")
# Keys a plan must have (older plans may lack `uncovered` and `groups`).
PLAN_KEYS = ("granularity", "tiers", "order", "fallback", "assignments", "durations",
             "default_duration_s")


class ReportError(SvctraceError):
    """A report file is missing, unreadable or of another schema."""


class PlanError(SvctraceError):
    """A plan file is missing, unreadable, of another schema or inconsistent."""


def check_schema(data: Any, schema: str, what: str, error: type[SvctraceError],
                 hint: str = "") -> dict:
    """`data` itself if it is an object whose "schema" is `schema`; else a hard, clear error
    (coverage.py's rule for its data files). `what` names it: "report out.json"."""
    found = data.get("schema") if isinstance(data, dict) else None
    if found != schema:
        raise error(f"{what} has schema {found!r}; this svctrace reads {schema!r}"
                    + (f" ({hint})" if hint else ""))
    return data


def _parse(text: str | bytes, what: str, error: type[SvctraceError]) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise error(f"{what} is not valid JSON: {exc}") from None


def _dumps(data: dict) -> str:
    # No indent: json's C encoder only runs without it (10x faster on large suites);
    # `python -m json.tool` pretty-prints for a person.
    return json.dumps(data, separators=(",", ":")) + "\n"


@dataclass(frozen=True, kw_only=True)
class Record:
    """A JSON object with typed fields. Keys this svctrace does not know stay in `extra`, and
    `keys` remembers which keys the object had and in which order, so that dumping what was
    loaded gives the same bytes and a newer svctrace's fields are not lost."""

    extra: dict = field(default_factory=dict, repr=False)
    keys: tuple[str, ...] = field(default=(), repr=False, compare=False)

    # Fields holding records: key -> (load one JSON value, dump it back).
    NESTED: ClassVar[dict[str, tuple]] = {}

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        """{field name: its default value} in declaration order."""
        found = cls.__dict__.get("_FIELDS")
        if found is None:
            cls._FACTORIES = {f.name: f.default_factory for f in fields(cls)
                              if f.default_factory is not MISSING}
            found = {f.name: (f.default if f.default is not MISSING else
                              cls._FACTORIES[f.name]())
                     for f in fields(cls) if f.name not in ("extra", "keys")}
            cls._FIELDS = found
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        known = cls._fields()
        nested = cls.NESTED
        values: dict[str, Any] = {}
        extra = {}
        for key, value in data.items():
            if key in known:
                values[key] = nested[key][0](value) if key in nested else value
            else:
                extra[key] = value
        if len(values) < len(known):  # a fresh default each: records never share a list
            factories = cls._FACTORIES
            for key, default in known.items():
                if key not in values:
                    values[key] = factories[key]() if key in factories else default
        # Past the frozen __init__ (a setattr per field): reports hold 30,000 test records.
        record = object.__new__(cls)
        record.__dict__.update(values, extra=extra, keys=tuple(data))
        return record

    def has(self, key: str) -> bool:
        """Whether the object has `key`: loaded, it was in the JSON; built, it is set."""
        if self.keys:
            return key in self.keys
        known = self._fields()
        return key in self.extra or (key in known and getattr(self, key) != known[key])

    def to_dict(self) -> dict[str, Any]:
        known = self._fields()
        nested = self.NESTED
        # Built in code: every field in declaration order; loaded: the keys it had, then
        # any field given a value since.
        order = self.keys or tuple(known)
        out: dict[str, Any] = {}
        for key in order:
            if key in known:
                value = getattr(self, key)
                out[key] = nested[key][1](value) if key in nested else value
            elif key in self.extra:
                out[key] = self.extra[key]
        for key, default in known.items():
            if key not in out and getattr(self, key) != default:
                value = getattr(self, key)
                out[key] = nested[key][1](value) if key in nested else value
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out


def _table(kind: type[Record]) -> tuple:
    """(load, dump) of a {name: record} table."""
    return (lambda d: {k: kind.from_dict(v) for k, v in d.items()},
            lambda d: {k: v.to_dict() for k, v in d.items()})


# -- the report (svctrace-report/1) ------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class TestRecord(Record):
    """One test: observed `services` and `phases`; inferred `inherited`, `declared`,
    `baseline`; and `needs`, the services it needs to pass. Fields in build_report's order."""

    __test__ = False  # a record, not a pytest test class

    services: list[str] = field(default_factory=list)
    phases: dict[str, list[str]] = field(default_factory=dict)
    outcome: str | None = None
    ran: bool = False
    ran_in: list[str] = field(default_factory=list)   # merged reports: the runs it ran in
    duration_s: float | None = None
    worker: str | None = None
    evidence: dict[str, dict] = field(default_factory=dict)
    inherited: dict[str, list[str]] = field(default_factory=dict)
    declared: list[str] = field(default_factory=list)
    baseline: list[str] = field(default_factory=list)
    needs: list[str] = field(default_factory=list)
    suite_started: list[str] = field(default_factory=list)  # at the suite's own listeners
    failed_probes: dict[str, dict] = field(default_factory=dict)
    denied: list[str] = field(default_factory=list)
    denied_evidence: dict[str, dict] = field(default_factory=dict)
    ignored: dict[str, dict] = field(default_factory=dict)
    unseen_clients: list[str] = field(default_factory=list)  # inprocess: C clients it misses
    needs_proof: dict[str, str] = field(default_factory=dict)  # svctrace prove: verdicts
    # records the backend lost while the test ran (absent when none): `needs` may miss some
    lost_events: int = 0
    incomplete: bool = False

    @property
    def proven_needs(self) -> list[str]:
        """Its needs once proofs count: less the services proven not needed. The needs
        every plan and view places a test by."""
        if not self.needs_proof:
            return self.needs
        return [s for s in self.needs if self.needs_proof.get(s) != NOT_NEEDED]


@dataclass(frozen=True, kw_only=True)
class RunRecord(Record):
    """The report's `run` table (events.RunInfo is what the runner knows before it)."""

    svctrace_version: str | None = None
    run_id: str | None = None
    backend: str | None = None
    blind_spots: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    exit_code: int | None = None
    lost_events: int = 0
    events: dict[str, int] = field(default_factory=dict)
    backend_stats: dict = field(default_factory=dict)
    config: str | None = None
    baseline: list[str] = field(default_factory=list)
    runs: dict[str, dict] = field(default_factory=dict)  # merged reports: the runs merged

    @property
    def notes(self) -> list[str]:
        """What the run says about itself, then what its backend says."""
        return list(self.extra.get("notes", [])) + list(self.backend_stats.get("notes", []))


@dataclass(frozen=True, kw_only=True)
class FixtureRecord(Record):
    """A wider-scoped fixture's own traffic, and the tests that used it (with phases)."""

    scope: str = "?"
    services: list[str] = field(default_factory=list)
    tests: dict[str, list[str]] = field(default_factory=dict)
    evidence: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Report(Record):
    """A whole `svctrace-report/1` report."""

    schema: str = REPORT_SCHEMA
    run: RunRecord = field(default_factory=RunRecord)
    tests: dict[str, TestRecord] = field(default_factory=dict)
    unattributed: list[dict] = field(default_factory=list)
    fixtures: dict[str, FixtureRecord] = field(default_factory=dict)
    destinations: dict[str, dict] = field(default_factory=dict)  # what their traffic said
    summary: dict = field(default_factory=dict)

    NESTED: ClassVar[dict[str, tuple]] = {
        "run": (RunRecord.from_dict, RunRecord.to_dict),
        "tests": _table(TestRecord),
        "fixtures": _table(FixtureRecord),
    }

    @classmethod
    def from_dict(cls, data: Any, what: str = "report") -> Report:
        """The report of a JSON object; another schema or shape is a ReportError."""
        check_schema(data, REPORT_SCHEMA, what, ReportError)
        for key, kind in (("run", dict), ("tests", dict), ("fixtures", dict),
                          ("unattributed", list), ("summary", dict)):
            if key in data and not isinstance(data[key], kind):
                raise ReportError(f"{what}: its {key!r} is not a JSON "
                                  f"{'object' if kind is dict else 'array'}")
        return super().from_dict(data)

    @classmethod
    def load(cls, text: str | bytes, what: str = "report") -> Report:
        return cls.from_dict(_parse(text, what, ReportError), what)

    def dump(self) -> str:
        return _dumps(self.to_dict())

    def ran(self) -> dict[str, TestRecord]:
        """The tests that ran (a collected-only test has no observed needs)."""
        return {n: t for n, t in self.tests.items() if t.ran}


def report_text(report: Report | dict) -> str:
    """A report file's text: the model dumped, or a report's JSON object (schema checked)
    dumped as it is, so that writing a report just built costs no conversion."""
    if isinstance(report, Report):
        return report.dump()
    return _dumps(check_schema(report, REPORT_SCHEMA, "report", ReportError))


def _lenient(data: Any, schema: str) -> Any:
    # In memory, an object without "schema" (a partial report a caller built) is taken as
    # this schema; another schema is still refused.
    return {"schema": schema, **data} if isinstance(data, dict) and "schema" not in data \
        else data


def _as(kind: type[Record], data: Any, schema: str, what: str, error: type[SvctraceError]):
    """The model of `data` given as a model or as its JSON object (in memory: only its
    schema is checked, the keys a caller did not give take their defaults)."""
    if isinstance(data, kind):
        return data
    check_schema(_lenient(data, schema), schema, what, error)
    return Record.from_dict.__func__(kind, data)


def as_report(report: Report | Mapping) -> Report:
    """The model of a report given as a model or as its JSON object."""
    return _as(Report, report, REPORT_SCHEMA, "report", ReportError)


# -- the plan (svctrace-plan/1) ----------------------------------------------------------
def covering_tier(tiers: Iterable[tuple[str, Iterable[str]]], needs: Iterable[str]
                  ) -> str | None:
    """The first of (name, services) tiers, cheapest first, whose services cover `needs`;
    None when none does. The one rule that puts a test in a tier."""
    wanted = set(needs)
    for name, services in tiers:
        if wanted <= set(services):
            return name
    return None


@dataclass(frozen=True, kw_only=True)
class PlanTier(Record):
    """One tier of a plan: the services it starts and the tests it runs."""

    services: list[str] = field(default_factory=list)
    startup_s: float = 0.0
    tests: list[str] = field(default_factory=list)
    duration_s: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Plan(Record):
    """A `svctrace-plan/1` plan: tiers cheapest first (`order`), each test's tier."""

    schema: str = PLAN_SCHEMA
    svctrace_version: str | None = None
    granularity: str = "test"
    tiers: dict[str, PlanTier] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    fallback: str = ""
    assignments: dict[str, str] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    default_duration_s: float = 1.0
    uncovered: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)
    # tests moved to the fallback because records were lost while they ran (absent: none)
    incomplete: list[str] = field(default_factory=list)

    NESTED: ClassVar[dict[str, tuple]] = {"tiers": _table(PlanTier)}

    @classmethod
    def from_dict(cls, data: Any, what: str = "plan") -> Plan:
        """The plan of a JSON object; another schema or an inconsistent plan is a PlanError."""
        hint = "write one with `svctrace tiers --plan-out`"
        check_schema(data, PLAN_SCHEMA, what, PlanError, hint)
        missing = [k for k in PLAN_KEYS if k not in data]
        if missing:
            raise PlanError(f"{what} lacks {', '.join(missing)}: write it again with "
                            "`svctrace tiers --plan-out`")
        if not isinstance(data["tiers"], dict) or data["fallback"] not in data["tiers"] \
                or data["granularity"] not in GRANULARITIES:
            raise PlanError(f"{what} is inconsistent (fallback tier {data['fallback']!r}, "
                            f"granularity {data['granularity']!r})")
        bad = [name for name, tier in data["tiers"].items()
               if not isinstance(tier, dict) or not isinstance(tier.get("services"), list)
               or not isinstance(tier.get("tests"), list)]
        if bad:
            raise PlanError(f"{what}: tier {bad[0]!r} lacks its services or tests list")
        return super().from_dict(data)

    @classmethod
    def load(cls, text: str | bytes, what: str = "plan") -> Plan:
        return cls.from_dict(_parse(text, what, PlanError), what)

    def dump(self) -> str:
        # Indented: a plan is small, and people read and review it.
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def covering_tier(self, needs: Iterable[str]) -> str | None:
        """The cheapest tier of the plan whose services cover `needs` (None: no tier does)."""
        return covering_tier(((n, self.tiers[n].services) for n in self.order), needs)


def as_plan(plan: Plan | Mapping) -> Plan:
    """The model of a plan given as a model or as its JSON object."""
    return _as(Plan, plan, PLAN_SCHEMA, "plan", PlanError)
