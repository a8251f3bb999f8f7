"""Reads and validates `[tool.svctrace]` from a project's pyproject.toml."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from svctrace.errors import SvctraceError
from svctrace.join.services import RuleError, ServiceMap, environment_noise, parse_rule

DEFAULT_REPORT = "svctrace-report.json"
_DECLARE_KINDS = ("markers", "fixtures", "paths", "bases")
_TOP_KEYS = {"backend", "report", "services", "ignore", "baseline", "declare", "tiers",
             "ignore_self_loopback", "default_services", "ringbuf_pages", "incidental_share",
             "stacks", "strace_writes", "kernel_join"}


class ConfigError(SvctraceError):
    """Invalid [tool.svctrace] configuration; the message names the file and the key."""


@dataclass(frozen=True)
class Tier:
    name: str
    services: tuple[str, ...]
    startup_s: float = 0.0


@dataclass
class Config:
    path: Path | None = None
    backend: str = "auto"
    report: str = DEFAULT_REPORT
    services: dict[str, list[str]] = field(default_factory=dict)
    ignore: list[str] = field(default_factory=list)
    default_services: bool = True
    ignore_self_loopback: bool = True
    baseline: list[str] = field(default_factory=list)
    declare: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    tiers: list[Tier] = field(default_factory=list)
    ringbuf_pages: int | None = None
    incidental_share: float = 0.8
    stacks: bool = False  # svctrace run --stacks: Python call sites
    strace_writes: bool = False  # the strace backend also traces write()/writev() (slower)
    kernel_join: bool = True  # eBPF: fold per marker-writing process, connects too

    def service_map(self) -> ServiceMap:
        return ServiceMap(self.services, self.ignore, self.default_services,
                          environment_noise(os.environ))


def find_pyproject(start: str | os.PathLike | None = None) -> Path | None:
    here = Path(start or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _str_list(value, where: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, list) \
            or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    return list(value)


def _mapping_of_lists(value, where: str) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table of name = [strings]")
    return {k: _str_list(v, f"{where}.{k}") for k, v in value.items()}


def _parse(table: dict, where: str) -> Config:
    unknown = sorted(set(table) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} "
                          f"(known: {', '.join(sorted(_TOP_KEYS))})")
    cfg = Config()
    for key in ("backend", "report"):
        if key in table:
            if not isinstance(table[key], str):
                raise ConfigError(f"{where}.{key} must be a string")
            setattr(cfg, key, table[key])
    for key in ("default_services", "ignore_self_loopback", "stacks", "strace_writes",
                "kernel_join"):
        if key in table:
            if not isinstance(table[key], bool):
                raise ConfigError(f"{where}.{key} must be true or false")
            setattr(cfg, key, table[key])
    if "ringbuf_pages" in table:
        pages = table["ringbuf_pages"]
        if not isinstance(pages, int) or pages < 1 or pages & (pages - 1):
            raise ConfigError(f"{where}.ringbuf_pages must be a power of two >= 1")
        cfg.ringbuf_pages = pages
    if "incidental_share" in table:
        share = table["incidental_share"]
        if not isinstance(share, (int, float)) or not 0 < share <= 1:
            raise ConfigError(f"{where}.incidental_share must be a number in (0, 1]")
        cfg.incidental_share = float(share)
    cfg.services = _mapping_of_lists(table.get("services", {}), f"{where}.services")
    for name, specs in cfg.services.items():
        for spec in specs:
            try:
                parse_rule(name, spec)
            except RuleError as exc:
                raise ConfigError(f"{where}.services.{name}: {exc}") from None
    cfg.ignore = _str_list(table.get("ignore", []), f"{where}.ignore")
    for spec in cfg.ignore:
        try:
            parse_rule("ignore", spec)
        except RuleError as exc:
            raise ConfigError(f"{where}.ignore: {exc}") from None
    cfg.baseline = _str_list(table.get("baseline", []), f"{where}.baseline")
    declare = table.get("declare", {})
    if not isinstance(declare, dict):
        raise ConfigError(f"{where}.declare must be a table")
    for kind, value in declare.items():
        if kind not in _DECLARE_KINDS:
            raise ConfigError(f"{where}.declare: unknown key {kind!r} "
                              f"(known: {', '.join(_DECLARE_KINDS)})")
        cfg.declare[kind] = _mapping_of_lists(value, f"{where}.declare.{kind}")
    tiers = table.get("tiers", [])
    if not isinstance(tiers, list):
        raise ConfigError(f"{where}.tiers must be an array of tables ([[tool.svctrace.tiers]])")
    for index, tier in enumerate(tiers):
        label = f"{where}.tiers[{index}]"
        if not isinstance(tier, dict) or not isinstance(tier.get("name"), str):
            raise ConfigError(f"{label} needs name = \"...\"")
        extra = set(tier) - {"name", "services", "startup_s"}
        if extra:
            raise ConfigError(f"{label}: unknown key {sorted(extra)[0]!r}")
        startup = tier.get("startup_s", 0)
        if not isinstance(startup, (int, float)) or startup < 0:
            raise ConfigError(f"{label}.startup_s must be a number >= 0")
        cfg.tiers.append(Tier(tier["name"], tuple(_str_list(tier.get("services", []),
                                                            f"{label}.services")), float(startup)))
    return cfg


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load [tool.svctrace] from `path`, or from the nearest pyproject.toml above the cwd.
    No file or no table gives the defaults."""
    found = Path(path) if path else find_pyproject()
    if found is None:
        return Config()
    try:
        with open(found, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read {found}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{found} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("svctrace")
    if table is None:
        cfg = Config()
    elif not isinstance(table, dict):
        raise ConfigError(f"{found}: [tool.svctrace] must be a table")
    else:
        cfg = _parse(table, f"{found}: tool.svctrace")
    cfg.path = found
    return cfg
