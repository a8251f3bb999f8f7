"""What the tier guard denies (pure): the denied services of --deny/--allow/a tier, and the
kernel's deny table compiled from the service map with the map's own precedence."""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from svctrace.errors import SvctraceError
from svctrace.join.services import Rule, ServiceMap
from svctrace.report.model import Plan, Report, as_plan, as_report

# Mirrors of bpf/guard.h (tests/test_kernel_contract.py checks them): enum guard_action,
# the sun_path size, the basename prefix buffer, and the stages (two per name).
ACT_ALLOW, ACT_DENY = 0, 1
UNIX_PATH = 108
PROTOS = {"tcp": 6, "udp": 17}
# Stages in the order classify() consults them (bpf/guard.bpf.c looks them up in this
# order; odd stages hold rules without a port). "internet": `--deny internet`, the globally
# routable addresses: after the user's rules, before the port defaults (a database at a
# public address is on the internet whatever its port).
STAGE_NAMES = ("ignore", "user", "noise", "internet", "default")
INTERNET = "internet"
# Not globally routable (IANA special-purpose registries; evidence.internet() agrees, a
# test checks it): the internet is every other address.
_NOT_GLOBAL = {4: ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8",
                   "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24",
                   "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
                   "224.0.0.0/3"),
               6: ("2001::/23", "2001:db8::/32", "2002::/16")}
_INTERNET_ROOTS = {4: "0.0.0.0/0", 6: "2000::/3"}
MAX_PORTS_PER_NETWORK_RULE = 1024  # "10.0.0.0/8:9000-9100" is expanded port by port
MAX_RULES = 16384
MAX_PATHS = 1024
MAX_PATTERNS = 16
PATTERN_MAX = 64
_GLOB = re.compile(r"[*?\[]")
# "*/<literal>*" or "*/<literal>": any folder, a basename prefix (or exact basename).
_BASENAME = re.compile(r"^\*/([^*?\[/]+)(\*?)$")


class GuardError(SvctraceError):
    """The guard cannot do what was asked: unknown service, a rule the kernel cannot match."""


@dataclass(frozen=True)
class DenySpec:
    """Which services the guard refuses, and why (for the report and the end lines)."""

    mode: str                      # "deny" | "allow" | "tier"
    denied: tuple[str, ...]
    allowed: tuple[str, ...] = ()  # allow/tier: what stays reachable by name
    tier: str | None = None
    plan: str | None = None


def named_services(smap: ServiceMap) -> list[str]:
    return sorted({r.name for r in smap.rules})


def _split(values: tuple[str, ...] | list[str]) -> list[str]:
    return [s.strip() for v in values for s in v.split(",") if s.strip()]


def _check_known(names: list[str], smap: ServiceMap, option: str) -> None:
    known = named_services(smap) + ([INTERNET] if option == "--deny" else [])
    unknown = [n for n in names if n not in known]
    if unknown:
        raise GuardError(f"{option} {', '.join(unknown)}: the service map names no such "
                         f"service (it knows {', '.join(known)})")


# Services of the machine, not of a tier: --allow and tier guards never refuse them (a
# refused resolver breaks every name lookup); `--deny dns` still can.
MACHINE_SERVICES = frozenset({"dns"})


def deny_spec(smap: ServiceMap, deny: list[str], allow: list[str], baseline: list[str],
              tier: tuple[str, list[str], str] | None = None) -> DenySpec | None:
    """--deny A,B | --allow A,B | a plan's tier (name, its services, plan path); baseline
    services (every job has them) and MACHINE_SERVICES are never denied by --allow or a
    tier."""
    deny, allow = _split(deny), _split(allow)
    given = [n for n, v in (("--deny", deny), ("--allow", allow), ("--guard", tier)) if v]
    if len(given) > 1:
        raise GuardError(f"{' and '.join(given)} exclude each other: give one")
    if deny:
        _check_known(deny, smap, "--deny")
        return DenySpec("deny", tuple(sorted(set(deny))))
    if allow:
        _check_known(allow, smap, "--allow")
        keep = set(allow) | set(baseline) | MACHINE_SERVICES
        return DenySpec("allow", tuple(n for n in named_services(smap) if n not in keep),
                        tuple(sorted(set(allow))))
    if tier:
        name, services, plan = tier
        keep = set(services) | set(baseline) | MACHINE_SERVICES
        return DenySpec("tier", tuple(n for n in named_services(smap) if n not in keep),
                        tuple(sorted(set(services))), name, plan)
    return None


@dataclass
class Table:
    """The kernel's deny table. inet: {(stage, family, proto, port, prefixlen, addr16):
    (action, service index, rank)}; unix_exact: {path bytes: (action, service, rank)};
    unix_patterns: [(basename prefix, exact, action, service, rank)]."""

    services: list[str]
    inet: dict = field(default_factory=dict)
    unix_exact: dict = field(default_factory=dict)
    unix_patterns: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped_globs: list[str] = field(default_factory=list)  # allow rules the kernel skips
    # Denied services' rules by host name: (rule, verdict, stage), entered into the kernel
    # table address by address as the run resolves matching names (entries_for_name)
    by_name: list = field(default_factory=list)

    @property
    def stages(self) -> int:
        stages = {key[0] for key in self.inet}
        for _rule, _value, stage in self.by_name:
            stages |= {stage * 2, stage * 2 + 1}
        return sum(1 << stage for stage in stages)


def _aligned_blocks(winner: list[int]):
    """(first port, prefix bits over the 16-bit port, value) covering every port whose
    winner is not -1, in the largest aligned blocks of one value."""
    port = 0
    while port < 65536:
        value = winner[port]
        size = 1
        while port % (size * 2) == 0 and port + size * 2 <= 65536 and \
                all(w == value for w in winner[port + size: port + size * 2]):
            size *= 2
        if value != -1:
            yield port, 16 - (size.bit_length() - 1), value
        port += size


def internet_networks() -> list:
    """The globally routable networks, as few CIDRs as cover them exactly."""
    out = []
    for version, root in _INTERNET_ROOTS.items():
        nets = [ipaddress.ip_network(root)]
        for hole in map(ipaddress.ip_network, _NOT_GLOBAL[version]):
            nets = [piece for net in nets
                    for piece in (net.address_exclude(hole) if hole.subnet_of(net) else
                                  () if net.subnet_of(hole) else (net,))]
        out += sorted(nets)
    return out


def _families(rule: Rule) -> tuple[int, ...]:
    if rule.network is None:
        return (2, 10)
    return (2,) if rule.network.version == 4 else (10,)


def _addr16(rule: Rule) -> bytes:
    if rule.network is None:
        return bytes(16)
    return rule.network.network_address.packed.ljust(16, b"\0")


def _protos(rule: Rule) -> tuple[int, ...]:
    return (PROTOS[rule.transport],) if rule.transport else (6, 17)


def compile_table(smap: ServiceMap, denied: tuple[str, ...] | list[str]) -> Table:
    """The deny table that refuses exactly the destinations classify() names as a denied
    service. Raises GuardError for a denied service's rule the kernel cannot match."""
    denied = set(denied)
    table = Table(services=named_services(smap) + ([INTERNET] if INTERNET in denied else []))
    index = {name: i for i, name in enumerate(table.services)}
    user = smap.rules[:smap.user_rule_count]
    default = smap.rules[smap.user_rule_count:]
    rank = 0
    for stage, rules in enumerate((smap.ignore, user, smap.noise, (), default)):
        if STAGE_NAMES[stage] == INTERNET and INTERNET in denied:
            rank += 1
            _add_internet(table, (ACT_DENY, index[INTERNET], rank), stage)
        port_only: dict[int, list[int]] = {}
        ranked = []
        for rule in rules:
            rank += 1
            named = STAGE_NAMES[stage] in ("user", "default")
            action = ACT_DENY if named and rule.name in denied else ACT_ALLOW
            value = (action, index.get(rule.name, 0) if named else 0, rank)
            ranked.append(value)
            if rule.unix_glob is not None:
                _add_unix(table, rule, value)
                continue
            if rule.host_glob is not None:
                # Names are known only once the run resolves them, after the table is
                # loaded: their addresses are entered then (entries_for_name).
                if action == ACT_DENY:
                    table.by_name.append((rule, value, stage))
                continue
            if rule.ports is not None and rule.network is None:
                for proto in _protos(rule):
                    winner = port_only.setdefault(proto, [-1] * 65536)
                    for port in range(rule.ports[0], rule.ports[1] + 1):
                        if winner[port] == -1:
                            winner[port] = len(ranked) - 1
                continue
            ports: list[int | None] = [None]
            if rule.ports is not None:
                low, high = rule.ports
                if high - low >= MAX_PORTS_PER_NETWORK_RULE:
                    if action == ACT_DENY:
                        raise GuardError(
                            f"rule {rule.spec!r} of {rule.name}: a network with more than "
                            f"{MAX_PORTS_PER_NETWORK_RULE} ports cannot be put in the "
                            "kernel's table: split it or narrow the port range")
                    table.notes.append(f"rule {rule.spec!r} ({rule.name}) is too wide for "
                                       "the kernel table and is not consulted there")
                    continue
                ports = list(range(low, high + 1))
            for family in _families(rule):
                for proto in _protos(rule):
                    for port in ports:
                        sub = stage * 2 + (port is None)
                        netbits = rule.network.prefixlen
                        key = (sub, family, proto, port or 0, 48 + netbits, _addr16(rule))
                        if key not in table.inet or table.inet[key][2] > value[2]:
                            table.inet[key] = value
        for proto, winner in port_only.items():
            for first, bits, which in _aligned_blocks(winner):
                for family in (2, 10):
                    key = (stage * 2, family, proto, first, 32 + bits, bytes(16))
                    value = ranked[which]
                    if key not in table.inet or table.inet[key][2] > value[2]:
                        table.inet[key] = value
    denies_unix = any(v[0] == ACT_DENY for v in table.unix_exact.values()) or \
        any(p[2] == ACT_DENY for p in table.unix_patterns)
    if denies_unix and table.skipped_globs:
        table.notes.append(
            f"the guard cannot match {len(table.skipped_globs)} unix globs of ignored or "
            f"allowed sockets ({', '.join(table.skipped_globs[:3])}...): a path they share "
            "with a denied service's rule is refused")
    if len(table.inet) > MAX_RULES:
        raise GuardError(f"the service map needs {len(table.inet)} kernel table entries "
                         f"(limit {MAX_RULES}): narrow its port ranges")
    if len(table.unix_exact) > MAX_PATHS or len(table.unix_patterns) > MAX_PATTERNS:
        raise GuardError(f"the service map has more unix rules than the kernel table holds "
                         f"({MAX_PATHS} paths, {MAX_PATTERNS} basename patterns)")
    return table


def entries_for_name(table: Table, name: str, addresses) -> dict:
    """Kernel table entries refusing `addresses`, which the run resolved `name` to, for
    each denied service's rule naming that host: {key fields: verdict}."""
    import fnmatch
    found: dict = {}
    name = name.rstrip(".").lower()
    for rule, value, stage in table.by_name:
        if not fnmatch.fnmatchcase(name, rule.host_glob):
            continue
        ports: list = [None]
        if rule.ports is not None:
            low, high = rule.ports
            ports = list(range(low, min(high, low + MAX_PORTS_PER_NETWORK_RULE) + 1))
        for address in addresses:
            try:
                addr = ipaddress.ip_address(address)
            except ValueError:
                continue
            if addr.version == 6 and addr.ipv4_mapped is not None:
                addr = addr.ipv4_mapped
            family, bits = (2, 32) if addr.version == 4 else (10, 128)
            for proto in _protos(rule):
                for port in ports:
                    key = (stage * 2 + (port is None), family, proto, port or 0, 48 + bits,
                           addr.packed.ljust(16, b"\0"))
                    found[key] = value
    return found


def _add_internet(table: Table, value: tuple[int, int, int], stage: int) -> None:
    """Deny every globally routable address, any port, TCP and UDP (the stage's port-less
    half: stage * 2 + 1)."""
    for net in internet_networks():
        family = 2 if net.version == 4 else 10
        for proto in PROTOS.values():
            key = (stage * 2 + 1, family, proto, 0, 48 + net.prefixlen,
                   net.network_address.packed.ljust(16, b"\0"))
            table.inet[key] = value


def _unix_name(text: str) -> bytes:
    # "@name" is an abstract name: a leading NUL in the kernel's sun_path
    return b"\0" + text[1:].encode() if text.startswith("@") else text.encode()


def _add_unix(table: Table, rule: Rule, value: tuple[int, int, int]) -> None:
    pattern = rule.unix_glob
    if not _GLOB.search(pattern):
        name = _unix_name(pattern)
        if len(name) <= UNIX_PATH and (name not in table.unix_exact
                                 or table.unix_exact[name][2] > value[2]):
            table.unix_exact[name] = value
        return
    match = _BASENAME.match(pattern)
    if match and len(match.group(1).encode()) <= PATTERN_MAX:
        table.unix_patterns.append((match.group(1).encode(), not match.group(2), *value))
        return
    if value[0] == ACT_DENY:
        raise GuardError(
            f"unix rule {rule.spec!r} of denied service {rule.name}: the kernel guard matches "
            "exact paths and '*/<name prefix>*' only; give the socket's exact path in "
            "[tool.svctrace.services], or do not deny this service")
    # An allow rule only matters where it shadows a denied one (compile_table says so).
    table.skipped_globs.append(rule.spec)


def plan_from_command(command: list[str]) -> tuple[str | None, str | None]:
    """(--svctrace-plan, --svctrace-tier) as the command's pytest will read them."""
    found: dict[str, str] = {}
    for i, arg in enumerate(command):
        for option in ("--svctrace-plan", "--svctrace-tier"):
            if arg == option and i + 1 < len(command):
                found[option] = command[i + 1]
            elif arg.startswith(option + "="):
                found[option] = arg.split("=", 1)[1]
    return found.get("--svctrace-plan"), found.get("--svctrace-tier")


def covering_tier(plan: Plan | dict, needs: list[str]) -> str | None:
    """The cheapest tier of the plan whose services cover `needs` (None: no tier does)."""
    return as_plan(plan).covering_tier(needs)


def misplaced_lines(report: Report | dict, plan: Plan | dict | None,
                    spec: DenySpec) -> list[str]:
    """One line per test that tried a denied service: what it tried and, for a tier run,
    the tier it belongs in."""
    lines = []
    report = as_report(report)
    shadow = (report.run.extra.get("guard") or {}).get("shadow")
    would = " (shadow: allowed, would be refused)" if shadow else ""
    plan = as_plan(plan) if plan is not None else None
    for nodeid, test in sorted(report.tests.items()):
        if not test.denied:
            continue
        tried = ", ".join(test.denied)
        if spec.mode == "tier" and plan is not None:
            home = plan.covering_tier(test.needs)
            where = (f"it belongs in tier {home!r}" if home else
                     f"no tier of the plan starts {', '.join(test.needs)}")
            lines.append(f"guard: {nodeid} tried {tried}, which tier {spec.tier!r} does not "
                         f"start: {where}{would}")
        else:
            lines.append(f"guard: {nodeid} tried {tried}, denied by --{spec.mode}{would}")
    return lines
