"""Which protocol a client speaks, from the first bytes it sends on a connection (pure).

One small recogniser per protocol, each given the first bytes of a connection (the first
datagram for UDP; backends capture a bounded prefix, so any of them may be cut short) and
answering only when those bytes cannot be read as anything else it knows. Every recogniser
is run; two answers are `ambiguous`, never a guess. What they return holds only the named
fields below: never the bytes, and never what follows a user name (StartupMessage) or a
command (AUTH), so no secret reaches the report.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass

AMBIGUOUS = "ambiguous"


@dataclass(frozen=True, slots=True)
class Recognition:
    """protocol: "postgres", "redis", "kafka", "http", "http2", "tls", "clickhouse",
    "memcached", "mongodb", "amqp", "zookeeper", "statsd", "dns", or AMBIGUOUS.
    source: what it was recognised from, as a phrase ("a RESP command (HELLO)").
    host: the host the client asked for (HTTP Host header, TLS SNI), else None.
    candidates: for AMBIGUOUS, the protocols that all fit."""

    protocol: str
    source: str
    host: str | None = None
    candidates: tuple[str, ...] = ()


def _be32(data: bytes, at: int) -> int:
    return struct.unpack_from(">I", data, at)[0]


def _be16(data: bytes, at: int) -> int:
    return struct.unpack_from(">H", data, at)[0]


def _printable(raw: bytes) -> bool:
    return all(0x20 <= b < 0x7F for b in raw)


# ---- PostgreSQL: the first message has no type byte: length, then a request code --------
_PG_CODES = {80877103: "an SSLRequest", 80877104: "a GSSENCRequest",
             80877102: "a CancelRequest"}


def _postgres(data: bytes, transport: str) -> Recognition | None:
    if len(data) < 8:
        return None
    length, code = _be32(data, 0), _be32(data, 4)
    if code in _PG_CODES and length == (16 if code == 80877102 else 8):
        return Recognition("postgres", _PG_CODES[code])
    if code >> 16 == 3 and code & 0xFFFF <= 2 and 8 < length <= 10_000:
        # StartupMessage v3.x: NUL-terminated parameter names follow ("user", "database")
        params = data[8:length]
        name = params.split(b"\0", 1)[0]
        if len(data) > 8 and not (name and _printable(name) and name.isascii()):
            return None
        return Recognition("postgres", "a StartupMessage")
    return None


# ---- Redis: RESP arrays of bulk strings, or an inline command line ----------------------
# Commands a client sends first: handshake, auth, health checks and the common data ones.
_REDIS_FIRST = frozenset(
    "HELLO AUTH PING SELECT CLIENT INFO COMMAND ECHO QUIT FLUSHDB FLUSHALL GET SET DEL "
    "EXISTS EXPIRE INCR DECR MGET MSET KEYS SCAN HGET HSET HGETALL LPUSH RPUSH LPOP RPOP "
    "LRANGE SADD SMEMBERS ZADD ZRANGE PUBLISH SUBSCRIBE PSUBSCRIBE MULTI EXEC EVAL EVALSHA "
    "SCRIPT CLUSTER READONLY XADD XREAD TYPE TTL DBSIZE CONFIG SETEX SETNX".split())
_MC_STORE = re.compile(rb"(set|add|replace|append|prepend|cas) \S{1,250} \d+ -?\d+ \d+"
                       rb"( \d+)?( noreply)?\r\n")
_RESP = re.compile(rb"\*(\d{1,6})\r\n(?:\$(\d{1,9})\r\n([A-Za-z_.-]{1,32})?)?")


def _redis(data: bytes, transport: str) -> Recognition | None:
    if transport == "udp":
        return None
    m = _RESP.match(data)
    if m and int(m.group(1)) > 0 and (m.end() == len(data) or m.group(2)):
        word = (m.group(3) or b"").upper().decode()
        if m.group(3) and len(m.group(3)) != int(m.group(2)) and m.end() < len(data):
            return None  # the bulk string is longer than its word: not a command name
        named = f" ({word})" if word in _REDIS_FIRST else ""
        return Recognition("redis", f"a RESP command{named}")
    word = _first_word(data)
    if word and word.upper() in _REDIS_FIRST and not _MC_STORE.match(data):
        # (a memcached storage line's flags/exptime/bytes is no valid Redis SET)
        return Recognition("redis", f"an inline command ({word.upper()})")
    return None


def _first_word(data: bytes) -> str | None:
    """The first word of a complete first text line ("PING\\r\\n"), or None."""
    line, sep, _ = data.partition(b"\r\n")
    if not sep or not line or not _printable(line) or re.search(rb" HTTP/\d(\.\d)?$", line):
        return None  # an HTTP request line is not a Redis or memcached command
    return line.split(b" ", 1)[0].decode()


# ---- memcached: text commands, or the binary protocol's request magic --------------------
_MC_ONLY = frozenset({"gets", "gat", "gats", "touch", "stats", "version", "verbosity",
                      "flush_all", "mg", "ms", "md", "ma", "mn", "me"})
_MC_SHARED = frozenset({"get", "delete", "incr", "decr", "quit"})  # Redis has them too


def _memcached(data: bytes, transport: str) -> Recognition | None:
    if _MC_STORE.match(data):
        return Recognition("memcached", "a memcached storage command")
    if len(data) >= 24 and data[0] == 0x80 and data[5] == 0 and data[1] <= 0x48:
        keylen, extras = _be16(data, 2), data[4]
        if keylen + extras <= _be32(data, 8):
            return Recognition("memcached", "a memcached binary request")
    word = _first_word(data)
    if word in _MC_ONLY or word in _MC_SHARED:
        return Recognition("memcached", f"a memcached text command ({word})")
    return None


# ---- Kafka: size, then a request header v1/v2 (api key, version, correlation, client) ---
_KAFKA_APIS = {0: "Produce", 1: "Fetch", 2: "ListOffsets", 3: "Metadata",
               8: "OffsetCommit", 9: "OffsetFetch", 10: "FindCoordinator", 11: "JoinGroup",
               12: "Heartbeat", 13: "LeaveGroup", 14: "SyncGroup", 15: "DescribeGroups",
               16: "ListGroups", 17: "SaslHandshake", 18: "ApiVersions", 19: "CreateTopics",
               20: "DeleteTopics", 22: "InitProducerId", 32: "DescribeConfigs",
               36: "SaslAuthenticate", 60: "DescribeCluster"}


def _kafka(data: bytes, transport: str) -> Recognition | None:
    if transport == "udp" or len(data) < 14:
        return None
    size, key, version = _be32(data, 0), _be16(data, 4), _be16(data, 6)
    if key not in _KAFKA_APIS or version > 20 or not 10 <= size <= 100 << 20:
        return None
    client_len = struct.unpack_from(">h", data, 12)[0]
    if client_len == -1:
        pass  # a null client id
    elif client_len < 1 or 14 + client_len > size + 4:
        return None
    elif not _printable(data[14:14 + client_len]):
        return None
    return Recognition("kafka", f"an {_KAFKA_APIS[key]} request (v{version})"
                       if _KAFKA_APIS[key][0] in "AEIOU" else
                       f"a {_KAFKA_APIS[key]} request (v{version})")


# ---- HTTP/1.x, HTTP/2, TLS ---------------------------------------------------------------
_HTTP_LINE = re.compile(rb"(GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH|TRACE|CONNECT) "
                        rb"(\S{1,2048})(?: (HTTP/1\.[01])\r\n|$| ?$)")
_HOST = re.compile(rb"\r\nhost:[ \t]*([A-Za-z0-9.\-:\[\]_]{1,261})\r\n", re.I)
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _http(data: bytes, transport: str) -> Recognition | None:
    if transport == "udp":
        return None
    m = _HTTP_LINE.match(data)
    if not m or not (m.group(3) or m.group(2).startswith((b"/", b"*", b"http"))):
        return None
    host = _HOST.search(data)
    if host:
        return Recognition("http", "an HTTP/1.x request line and Host header",
                           host.group(1).decode().lower())
    return Recognition("http", "an HTTP/1.x request line")


def _http2(data: bytes, transport: str) -> Recognition | None:
    if len(data) >= 8 and _H2_PREFACE.startswith(data[:len(_H2_PREFACE)]):
        return Recognition("http2", "the HTTP/2 connection preface")
    return None


def _tls(data: bytes, transport: str) -> Recognition | None:
    # record: type 22 (handshake), version 3.x; handshake: type 1 (ClientHello)
    if transport == "udp" or len(data) < 6 or data[0] != 0x16 or data[1] != 3 \
            or data[2] > 4 or data[5] != 1:
        return None
    sni = _sni(data)
    if sni:
        return Recognition("tls", "a TLS ClientHello with SNI", sni)
    return Recognition("tls", "a TLS ClientHello")


def _sni(data: bytes) -> str | None:
    """The server_name of a ClientHello, if the captured bytes reach it."""
    try:
        at = 5 + 4 + 2 + 32              # record and handshake headers, version, random
        at += 1 + data[at]               # session id
        at += 2 + _be16(data, at)        # cipher suites
        at += 1 + data[at]               # compression methods
        end = min(len(data), at + 2 + _be16(data, at))
        at += 2
        while at + 4 <= end:
            kind, size = _be16(data, at), _be16(data, at + 2)
            if kind == 0:  # server_name: list length, type 0 (host_name), length, name
                name = data[at + 9:at + 9 + _be16(data, at + 7)]
                if data[at + 6] == 0 and len(name) == _be16(data, at + 7) and name \
                        and _printable(name):
                    return name.decode().lower()
                return None
            at += 4 + size
    except (IndexError, struct.error):
        pass
    return None


# ---- ClickHouse native protocol: packet 0 (Hello), client name, version varints ---------
def _varuint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return value, at
        shift += 7
    raise ValueError("varint too long")


def _clickhouse(data: bytes, transport: str) -> Recognition | None:
    if transport == "udp" or len(data) < 8 or data[0] != 0:
        return None
    try:
        size, at = _varuint(data, 1)
        name = data[at:at + size]
        if not 0 < size <= 128 or len(name) < size or not _printable(name):
            return None
        _major, at = _varuint(data, at + size)
        _minor, at = _varuint(data, at)
        revision, at = _varuint(data, at)
    except (IndexError, ValueError):
        return None
    # protocol revisions are 5-digit numbers from 54000 on
    if 54000 <= revision < 100000:
        return Recognition("clickhouse", "a ClickHouse native Hello")
    return None


# ---- MongoDB: a wire message header (little endian) with OP_MSG or OP_QUERY -------------
def _mongodb(data: bytes, transport: str) -> Recognition | None:
    if transport == "udp" or len(data) < 16:
        return None
    length, _request, response, opcode = struct.unpack_from("<iiii", data, 0)
    if response != 0 or not 16 < length <= 48 << 20:
        return None
    if opcode == 2013:
        return Recognition("mongodb", "an OP_MSG message")
    if opcode == 2004 and len(data) >= 21:
        collection = data[20:].split(b"\0", 1)[0]
        if collection.endswith(b".$cmd") and _printable(collection):
            return Recognition("mongodb", "an OP_QUERY command")
    return None


# ---- AMQP: the protocol header ------------------------------------------------------------
def _amqp(data: bytes, transport: str) -> Recognition | None:
    if data.startswith(b"AMQP") and len(data) >= 5:
        return Recognition("amqp", "the AMQP protocol header")
    return None


# ---- ZooKeeper: ConnectRequest (protocol version 0, a 16-byte password) ------------------
def _zookeeper(data: bytes, transport: str) -> Recognition | None:
    if transport == "udp" or len(data) < 8:
        return None
    length, version = _be32(data, 0), _be32(data, 4)
    if length in (44, 45) and version == 0 and (len(data) < 36 or _be32(data, 28) == 16):
        return Recognition("zookeeper", "a ZooKeeper ConnectRequest")
    return None


# ---- statsd: "name:value|type" lines (UDP) ---------------------------------------------
_STATSD = re.compile(rb"[A-Za-z0-9_.\-/]{1,200}(?:,[^:\s|]{1,200})?:[+-]?[0-9.eE]+"
                     rb"\|(?:c|ms|g|s|h|d)(?:\|@[0-9.]+)?(?:\|#[^\n|]*)?(?:\n|$)")


def _statsd(data: bytes, transport: str) -> Recognition | None:
    if transport != "tcp" and _STATSD.match(data):
        return Recognition("statsd", "a statsd metric line")
    return None


# ---- DNS: a standard query with one question (TCP: after the 2-byte length) -------------
def _dns(data: bytes, transport: str) -> Recognition | None:
    body = data[2:] if transport == "tcp" else data
    if len(body) < 17:
        return None
    flags, qd, an, ns = _be16(body, 2), _be16(body, 4), _be16(body, 6), _be16(body, 8)
    if flags & 0xF800 or qd != 1 or an or ns:  # a query (QR 0), opcode 0 (QUERY)
        return None
    if transport == "tcp" and _be16(data, 0) != len(body) and len(data) < 64:
        return None
    at, labels = 12, 0
    while at < len(body) and body[at]:
        size = body[at]
        if size > 63 or not _printable(body[at + 1:at + 1 + size]):
            return None
        at, labels = at + 1 + size, labels + 1
    if labels == 0 and at >= len(body):
        return None
    return Recognition("dns", "a DNS query")


# The table: protocol -> recogniser. Order does not matter: every one is asked.
RECOGNISERS = (
    ("postgres", _postgres), ("redis", _redis), ("kafka", _kafka), ("http", _http),
    ("http2", _http2), ("tls", _tls), ("clickhouse", _clickhouse),
    ("memcached", _memcached), ("mongodb", _mongodb), ("amqp", _amqp),
    ("zookeeper", _zookeeper), ("statsd", _statsd), ("dns", _dns),
)


def recognise(data: bytes, transport: str = "tcp") -> Recognition | None:
    """What the first bytes a client sent say, or None when no recogniser knows them."""
    if not data:
        return None
    found = []
    for _name, recogniser in RECOGNISERS:
        try:
            answer = recogniser(data, transport)
        except (IndexError, struct.error, ValueError, UnicodeDecodeError):
            answer = None  # a recogniser that trips on bad input knows nothing
        if answer is not None:
            found.append(answer)
    if len(found) == 1:
        return found[0]
    if not found:
        return None
    names = tuple(sorted(r.protocol for r in found))
    return Recognition(AMBIGUOUS, "bytes that fit " + " and ".join(names), None, names)
