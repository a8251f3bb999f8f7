"""The guard's deny table (pure): what the kernel would refuse equals what classify() names
as a denied service, with the service map's precedence; options and plan arguments."""
from __future__ import annotations

import ipaddress

import pytest

from svctrace.events import Destination
from svctrace.guard.rules import (ACT_DENY, GuardError, compile_table, covering_tier,
                                  deny_spec, misplaced_lines, plan_from_command)
from svctrace.join.services import ServiceMap

PROTO = {"tcp": 6, "udp": 17}


def kernel_refuses(table, dest: Destination) -> bool:
    """bpf/guard.bpf.c's lookup, in Python: stages in order, longest prefix in each."""
    if dest.family == "unix":
        name = b"\0" + dest.address[1:].encode() if dest.address.startswith("@") \
            else dest.address.encode()
        best = table.unix_exact.get(name, (0, 0, 1 << 32))
        base = name.rsplit(b"/", 1)[-1]
        for prefix, exact, action, service, rank in table.unix_patterns:
            if rank < best[2] and base.startswith(prefix) and (not exact or base == prefix):
                best = (action, service, rank)
        return best[0] == ACT_DENY
    addr = ipaddress.ip_address(dest.address)
    family = 2 if addr.version == 4 else 10
    bits = "".join(f"{b:08b}" for b in addr.packed.ljust(16, b"\0"))
    for stage in range(10):
        port = 0 if stage & 1 else dest.port
        key = f"{port:016b}" + bits
        best = None
        for (st, fam, proto, kport, prefixlen, kaddr), value in table.inet.items():
            if (st, fam, proto) != (stage, family, PROTO[dest.transport]):
                continue
            entry = f"{kport:016b}" + "".join(f"{b:08b}" for b in kaddr)
            n = prefixlen - 32
            if key[:n] == entry[:n] and (best is None or n > best[0]):
                best = (n, value)
        if best:
            return best[1][0] == ACT_DENY
    return False


USER = {"pgbouncer": ["10.0.0.5:5432", "unix:/tmp/.s.PGSQL.6432"],
        "internal": ["10.0.0.0/8"], "metrics": ["8125/udp"], "edge": ["9000-9100"],
        "edge-narrow": ["9090-9093"], "broker": ["10.1.0.0/16:9092"]}
DESTS = [Destination("inet", t, a, p) for t in ("tcp", "udp")
         for a in ("127.0.0.1", "10.0.0.5", "10.1.2.3", "192.168.1.1", "::1")
         for p in (5432, 9092, 9091, 9000, 9100, 8125, 6379, 53, 1218, 7003, 12345)]
DESTS += [Destination("unix", "unix", p) for p in (
    "/var/run/postgresql/.s.PGSQL.5432", "/tmp/.s.PGSQL.6432", "/run/x.sock",
    "/var/run/nscd/socket", "@abstract", "/tmp/.s.PGSQL.5432.lock")]


@pytest.mark.parametrize("denied", [["kafka"], ["postgres"], ["internal"], ["edge"],
                                    ["metrics", "statsd"], ["edge-narrow", "redis"],
                                    ["pgbouncer", "broker", "dns"]])
def test_the_kernel_table_refuses_exactly_what_classify_names_denied(denied):
    smap = ServiceMap(USER, ignore=["192.168.1.1"])
    table = compile_table(smap, denied)
    for dest in DESTS:
        name = smap.classify(dest)
        assert kernel_refuses(table, dest) == (name in denied), (dest, name)


def test_a_denied_glob_the_kernel_cannot_match_is_an_error():
    smap = ServiceMap({"sock": ["unix:/run/*/x.sock"]})
    with pytest.raises(GuardError, match="exact paths"):
        compile_table(smap, ["sock"])
    compile_table(smap, ["kafka"])  # not denied: allowed


def test_deny_allow_and_tier_specs():
    smap = ServiceMap({"http-api": ["127.0.0.1:8000"]})
    assert deny_spec(smap, ["kafka,snuba"], [], []).denied == ("kafka", "snuba")
    allow = deny_spec(smap, [], ["postgres", "redis"], ["dns"])
    assert "postgres" not in allow.denied and "dns" not in allow.denied
    assert {"kafka", "http-api", "clickhouse"} <= set(allow.denied)
    tier = deny_spec(smap, [], [], [], ("db", ["postgres"], "plan.json"))
    assert tier.mode == "tier" and "redis" in tier.denied and "postgres" not in tier.denied
    # the machine's resolver is no tier's service: refused only when asked for by name
    assert "dns" not in tier.denied
    assert "dns" not in deny_spec(smap, [], ["postgres"], []).denied
    assert deny_spec(smap, ["dns"], [], []).denied == ("dns",)
    with pytest.raises(GuardError, match="no such service"):
        deny_spec(smap, ["kafak"], [], [])
    with pytest.raises(GuardError, match="exclude each other"):
        deny_spec(smap, ["kafka"], ["redis"], [])
    assert deny_spec(smap, [], [], []) is None


def test_plan_arguments_and_the_misplaced_line():
    assert plan_from_command(["pytest", "--svctrace-plan", "p.json",
                              "--svctrace-tier=db"]) == ("p.json", "db")
    assert plan_from_command(["pytest"]) == (None, None)
    plan = {"order": ["db", "full"], "tiers": {"db": {"services": ["postgres"]},
                                                "full": {"services": ["kafka", "postgres"]}}}
    assert covering_tier(plan, ["kafka"]) == "full"
    assert covering_tier(plan, ["mysql"]) is None
    spec = deny_spec(ServiceMap(), [], [], [], ("db", ["postgres"], "p.json"))
    report = {"tests": {"t.py::a": {"denied": ["kafka"], "needs": ["kafka", "postgres"]},
                        "t.py::b": {"denied": [], "needs": ["postgres"]}}}
    assert misplaced_lines(report, plan, spec) == [
        "guard: t.py::a tried kafka, which tier 'db' does not start: it belongs in tier 'full'"]


def test_a_rule_by_host_name_is_not_a_port_rule_in_the_kernel_table():
    # "cache.ci:6379" must not make the guard refuse every connect to port 6379
    smap = ServiceMap({"cache": ["cache.ci:6379", "10.0.0.5:6379"]})
    table = compile_table(smap, ["cache"])
    assert kernel_refuses(table, Destination("inet", "tcp", "10.0.0.5", 6379))
    assert not kernel_refuses(table, Destination("inet", "tcp", "10.0.0.6", 6379))
    # once the run resolves cache.ci, its addresses are refused at that port only
    from svctrace.guard.rules import entries_for_name
    table.inet.update(entries_for_name(table, "Cache.CI.", ["10.0.0.6", "::ffff:10.0.0.7"]))
    assert kernel_refuses(table, Destination("inet", "tcp", "10.0.0.6", 6379))
    assert kernel_refuses(table, Destination("inet", "tcp", "10.0.0.7", 6379))
    assert not kernel_refuses(table, Destination("inet", "tcp", "10.0.0.6", 6380))
    assert entries_for_name(table, "other.ci", ["10.0.0.8"]) == {}
    assert table.stages & 0b1100  # the user's stages are looked up even with no entry yet


def test_deny_internet_refuses_globally_routable_addresses_only():
    from svctrace.join.evidence import internet
    from svctrace.guard.rules import internet_networks
    smap = ServiceMap({"stripe": ["198.51.100.7:443", "93.184.216.34:443"]})
    table = compile_table(smap, ["internet"])
    for address, port in (("8.8.8.8", 53), ("93.184.216.35", 5432), ("2606:4700::1111", 443),
                          ("1.0.0.1", 80)):
        family = "inet6" if ":" in address else "inet"
        assert kernel_refuses(table, Destination(family, "tcp", address, port)), address
        assert internet(address)
    for address in ("127.0.0.1", "10.1.2.3", "192.168.1.1", "169.254.1.1", "100.64.1.1",
                    "::1", "fe80::1", "fd00::1", "2001:db8::1", "93.184.216.34"):
        family = "inet6" if ":" in address else "inet"
        # (93.184.216.34:443 is the user's stripe rule: the user's rules come first)
        assert not kernel_refuses(table, Destination(family, "tcp", address, 443)), address
    # the networks cover exactly what evidence calls internet, at their edges
    for net in internet_networks():
        assert internet(str(net.network_address)) and internet(str(net.broadcast_address)), net
    assert deny_spec(smap, ["internet"], [], []).denied == ("internet",)
