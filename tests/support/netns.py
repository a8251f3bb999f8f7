"""Service hosts at their own non-loopback addresses: a network namespace joined to the root
namespace by a veth pair, with TCP listeners inside: host:port and CIDR service rules are
tested end to end at addresses other than loopback.

    with service_host("svct", ["10.231.7.2", "10.231.7.3"], [8080, 9999]) as host:
        ...  # connect to 10.231.7.2:8080 from this (the root) namespace

Everything runs through netlink (pyroute2); nothing shells out to `ip`. The namespace, the
veth pair and the listener process are removed on the way out, also when the body raises.
Traffic only ever goes to the addresses inside the namespace this module created: before the
first probe, the kernel's route to every address must leave through our own veth.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import select
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator

import pytest

SUBNETS = ipaddress.ip_network("10.231.0.0/16")  # the /24s handed out come from here
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21  # netns.create() bind-mounts /run/netns/NAME and setns() needs it

# Runs inside the namespace: listen on every port, accept, read until EOF, close.
# It never sends, so the only traffic of a test is the test's own.
_SERVER = r"""
import socket, sys, threading
from pyroute2 import netns
netns.setns(sys.argv[1], flags=0)  # flags=0: never create a namespace by accident
listeners = []
for port in map(int, sys.argv[2:]):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)
    listeners.append(sock)

def drain(conn):
    with conn:
        conn.settimeout(30)
        try:
            while conn.recv(65536):
                pass
        except OSError:
            pass

def serve(sock):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=drain, args=(conn,), daemon=True).start()

for sock in listeners[1:]:
    threading.Thread(target=serve, args=(sock,), daemon=True).start()
print("ready", flush=True)
serve(listeners[0])
"""


@dataclass
class ServiceHost:
    namespace: str
    subnet: ipaddress.IPv4Network
    host_address: str              # the root namespace's end of the veth
    addresses: list[str]           # the service host's addresses (inside the namespace)
    ports: list[int]
    veth: str                      # root-side interface name
    pid: int | None = None         # the listener process
    notes: list[str] = field(default_factory=list)


def missing_privileges() -> str | None:
    """Why this process cannot build namespaces and veth pairs, or None when it can."""
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return "pyroute2 is not installed (pip install pyroute2; it is in the `test` extra)"
    if sys.platform != "linux":
        return f"network namespaces need Linux, not {sys.platform}"
    try:
        with open("/proc/self/status") as fh:
            caps = int(next(line for line in fh if line.startswith("CapEff:")).split()[1], 16)
    except (OSError, StopIteration, ValueError) as exc:
        return f"cannot read effective capabilities from /proc/self/status: {exc}"
    missing = [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN),
                                      ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
               if not caps >> bit & 1]
    if missing:
        return (f"missing {' and '.join(missing)} (uid {os.geteuid()}): creating network "
                "namespaces and veth pairs needs root")
    return None


def _used_networks() -> list:
    from pyroute2 import IPRoute
    used = []
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=socket.AF_INET):
            dst, plen = route.get_attr("RTA_DST"), route["dst_len"]
            if dst and plen:  # the default route overlaps everything; a /24 route wins
                used.append(ipaddress.ip_network(f"{dst}/{plen}", strict=False))
        for addr in ipr.get_addr(family=socket.AF_INET):
            used.append(ipaddress.ip_network(
                f"{addr.get_attr('IFA_ADDRESS')}/{addr['prefixlen']}", strict=False))
    return used


def free_subnet() -> ipaddress.IPv4Network:
    """A random 10.231.X.0/24 that no route or address of the root namespace touches."""
    used = _used_networks()
    candidates = [net for net in SUBNETS.subnets(new_prefix=24)
                  if not net.network_address.packed[2] in (0, 255)
                  and not any(net.overlaps(u) for u in used)]
    if not candidates:
        raise RuntimeError(f"every /24 of {SUBNETS} is already routed here")
    return random.choice(candidates)


def _subnet_of(addresses: list[str]) -> ipaddress.IPv4Network:
    if not addresses:
        raise ValueError("service_host needs at least one address")
    nets = {ipaddress.ip_interface(a if "/" in a else f"{a}/24").network for a in addresses}
    if len(nets) != 1:
        raise ValueError(f"addresses must share one subnet: {addresses}")
    net = nets.pop()
    if not net.subnet_of(SUBNETS):
        raise ValueError(f"{net} is outside {SUBNETS}, the only range these tests may use")
    return net


def _check_routes(ipr, addresses: list[str], veth_index: int) -> None:
    """Refuse to send anything unless every address is reached through our own veth."""
    for addr in addresses:
        routes = ipr.route("get", dst=addr)
        oif = routes[0].get_attr("RTA_OIF") if routes else None
        if oif != veth_index:
            raise RuntimeError(f"route to {addr} leaves through interface {oif}, not the test "
                               f"veth ({veth_index}); refusing to send")


def _wait_ready(proc: subprocess.Popen, addresses: list[str], ports: list[int],
                timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    line = proc.stdout.readline() if ready else ""
    if line.strip() != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=5)
        raise RuntimeError(f"listener in the namespace did not start: {line!r} {err}")
    pending = {(a, p) for a in addresses for p in ports}
    while pending:
        for target in sorted(pending):
            with socket.socket() as sock:
                sock.settimeout(1)
                if sock.connect_ex(target) == 0:
                    pending.discard(target)
        if pending and time.monotonic() > deadline:
            raise RuntimeError(f"not accepting after {timeout} s: {sorted(pending)}")
        if pending:
            time.sleep(0.05)


@contextlib.contextmanager
def service_host(name_prefix: str, addresses: list[str], ports: list[int]
                 ) -> Iterator[ServiceHost]:
    """A namespace "<prefix>-<random>" holding `addresses` (all in one 10.231.X.0/24), with
    TCP listeners on `ports` at each of them, reachable from the root namespace through a
    veth pair whose root end is 10.231.X.1. Skips the test when privileges are missing."""
    reason = missing_privileges()
    if reason:
        pytest.skip(reason)
    from pyroute2 import IPRoute, NetNS, netns

    subnet = _subnet_of(addresses)
    hosts = [ipaddress.ip_interface(a if "/" in a else f"{a}/{subnet.prefixlen}").ip
             for a in addresses]
    host_ip = next(ip for ip in subnet.hosts() if ip not in hosts)
    clash = [u for u in _used_networks() if subnet.overlaps(u)]
    if clash:
        raise RuntimeError(f"{subnet} is already in use here ({clash}); pick another "
                           "(tests.support.netns.free_subnet())")
    tag = secrets.token_hex(4)
    info = ServiceHost(namespace=f"{name_prefix}-{tag}", subnet=subnet,
                       host_address=str(host_ip), addresses=[str(h) for h in hosts],
                       ports=list(ports), veth=f"svh{tag}")
    peer = f"svp{tag}"

    with contextlib.ExitStack() as stack:
        try:
            netns.create(info.namespace)
        except PermissionError as exc:
            pytest.skip(f"creating network namespace {info.namespace} refused: {exc}")
        stack.callback(_remove_namespace, info.namespace)
        ipr = stack.enter_context(IPRoute())
        ipr.link("add", ifname=info.veth, kind="veth", peer=peer)
        stack.callback(_delete_link, info.veth)
        peer_index = ipr.link_lookup(ifname=peer)[0]
        ipr.link("set", index=peer_index, net_ns_fd=info.namespace)
        veth_index = ipr.link_lookup(ifname=info.veth)[0]
        ipr.addr("add", index=veth_index, address=info.host_address,
                 prefixlen=subnet.prefixlen)
        ipr.link("set", index=veth_index, state="up")
        with NetNS(info.namespace, flags=0) as ns:
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            index = ns.link_lookup(ifname=peer)[0]
            for ip in info.addresses:
                ns.addr("add", index=index, address=ip, prefixlen=subnet.prefixlen)
            ns.link("set", index=index, state="up")
        _check_routes(ipr, info.addresses, veth_index)

        proc = subprocess.Popen([sys.executable, "-c", _SERVER, info.namespace,
                                 *map(str, ports)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        stack.callback(_stop, proc)
        info.pid = proc.pid
        _wait_ready(proc, info.addresses, info.ports)
        yield info


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def _delete_link(ifname: str) -> None:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if found:
            ipr.link("del", index=found[0])  # takes the peer with it


def _remove_namespace(name: str) -> None:
    from pyroute2 import netns
    if name in netns.listnetns():
        netns.remove(name)


def leftovers(host: ServiceHost) -> list[str]:
    """What of `host` still exists (for tests of the cleanup itself); empty when all is gone."""
    from pyroute2 import IPRoute, netns
    out = []
    if host.namespace in netns.listnetns():
        out.append(f"namespace {host.namespace}")
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=host.veth):
            out.append(f"link {host.veth}")
    if host.pid is not None:
        try:
            with open(f"/proc/{host.pid}/stat") as fh:
                if fh.read().split(") ")[-1][:1] != "Z":
                    out.append(f"listener pid {host.pid}")
        except FileNotFoundError:
            pass
    return out
