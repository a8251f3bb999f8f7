"""Sample project for the host-name end-to-end test: services reached by the names a DNS
server and a hosts file of the outer test's own give them.

The outer test (tests/test_e2e_names.py) runs this suite with its own resolv.conf and hosts
file (a private mount namespace) whose DNS server lives in a network namespace it created:
cache.ci -> a redis-server of its own at SVCT_NAMES_REDIS_PORT, pg.ci -> (CNAME) the test
PostgreSQL, mystery.ci -> a TCP listener in the namespace at SVCT_NAMES_MYSTERY_PORT,
clickhouse.ci -> a loopback port nothing listens on, files.ci (hosts file only) -> the
namespace's other address.
"""
import ipaddress
import os
import socket

import pytest

if "SVCT_NAMES_REDIS_PORT" not in os.environ:
    pytest.skip("run by tests/test_e2e_names.py with its own DNS server",
                allow_module_level=True)

REDIS_PORT = int(os.environ["SVCT_NAMES_REDIS_PORT"])
MYSTERY_PORT = int(os.environ["SVCT_NAMES_MYSTERY_PORT"])
CLOSED_PORT = int(os.environ["SVCT_NAMES_CLOSED_PORT"])
PG_PORT = int(os.environ["SVCT_NAMES_PG_PORT"])


def talk(host, port):
    """Connect by name, send, wait until the listener has read it all (it closes on EOF)."""
    address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    # Only the outer test's own namespace or loopback, never anything else.
    assert ipaddress.ip_address(address) in ipaddress.ip_network("10.231.0.0/16"), address
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"hello\n")
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""


def test_redis_by_name():
    import redis
    client = redis.Redis(host="cache.ci", port=REDIS_PORT, socket_timeout=5)
    assert client.ping()
    client.close()


def test_postgres_by_cname():
    import psycopg2
    conn = psycopg2.connect(host="pg.ci", port=PG_PORT, dbname=os.environ["SVCT_NAMES_PG_DB"],
                            user=os.environ["SVCT_NAMES_PG_USER"], connect_timeout=5)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    conn.close()


def test_unknown_protocol_by_name():
    talk("mystery.ci", MYSTERY_PORT)


def test_refused_by_name():
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("clickhouse.ci", CLOSED_PORT), timeout=5).close()


def test_hosts_file_name():
    talk("files.ci", MYSTERY_PORT)


def test_no_names():
    assert 1 + 1 == 2
