"""A small DNS responder of the tests' own (stdlib only): UDP, A records and CNAMEs from a
table, run inside a network namespace the tests created (tests/support/netns.py).

    with dns_server(host.namespace, host.addresses[0], {"cache.ci": "127.0.0.1",
                                                         "pg.ci": "cname:db.svc.ci",
                                                         "db.svc.ci": "127.0.0.1"}):
        ...  # resolv.conf "nameserver <that address>" resolves those names

build_reply() is also the tests' way of making DNS replies byte by byte (join/dns.py tests).
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import select
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def question(data: bytes) -> tuple[str, int, int]:
    """(name, qtype, offset after the question) of a query (no compression in queries)."""
    labels, offset = [], 12
    while data[offset]:
        length = data[offset]
        labels.append(data[offset + 1:offset + 1 + length].decode("ascii").lower())
        offset += 1 + length
    qtype = struct.unpack_from("!H", data, offset + 1)[0]
    return ".".join(labels), qtype, offset + 5


def build_reply(query: bytes, table: dict[str, str | list[str]]) -> bytes:
    """The reply to `query`: its question, then the CNAME chain and A records from `table`
    ({name: "1.2.3.4" | ["1.2.3.4", ...] | "cname:target"}); owner names are compression
    pointers to the question or to the previous CNAME's target. NXDOMAIN when unknown."""
    name, qtype, end = question(query)
    qid = query[:2]
    answers, count = b"", 0
    owner_ptr = 12  # the question's name
    current, seen = name, set()
    found = current in table
    while current in table and current not in seen:
        seen.add(current)
        value = table[current]
        if isinstance(value, str) and value.startswith("cname:"):
            target = value[6:]
            rdata_at = end + len(answers) + 12  # pointer 2 + type/class/ttl 8 + rdlength 2
            rdata = encode_name(target)
            answers += struct.pack("!HHHIH", 0xC000 | owner_ptr, 5, 1, 60, len(rdata)) + rdata
            count += 1
            owner_ptr, current = rdata_at, target
            continue
        if qtype == 1:
            for address in [value] if isinstance(value, str) else value:
                rdata = ipaddress.IPv4Address(address).packed
                answers += struct.pack("!HHHIH", 0xC000 | owner_ptr, 1, 1, 60, 4) + rdata
                count += 1
        break
    rcode = 0 if found else 3
    header = qid + struct.pack("!HHHHH", 0x8180 | rcode, 1, count, 0, 0)
    return header + query[12:end] + answers


# Runs inside the namespace: answer UDP queries on ADDRESS:53 from the JSON table.
_SERVER = r"""
import json, socket, sys
from pyroute2 import netns
sys.path.insert(0, sys.argv[4])
from tests.support.dns import build_reply
netns.setns(sys.argv[1], flags=0)
table = json.loads(sys.argv[3])
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[2], 53))
print("ready", flush=True)
while True:
    data, peer = sock.recvfrom(4096)
    try:
        sock.sendto(build_reply(data, table), peer)
    except Exception as exc:
        print("bad query", exc, file=sys.stderr, flush=True)
"""


@contextlib.contextmanager
def dns_server(namespace: str, address: str, table: dict) -> Iterator[None]:
    """Serve `table` on UDP address:53 inside `namespace` until the block ends."""
    proc = subprocess.Popen([sys.executable, "-c", _SERVER, namespace, address,
                             json.dumps(table), str(ROOT)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 15)
        line = proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            proc.kill()
            raise RuntimeError(f"DNS responder did not start: {line!r} "
                               f"{proc.communicate(timeout=5)[1]}")
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
