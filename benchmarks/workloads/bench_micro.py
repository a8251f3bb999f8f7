"""The loop workloads, one pytest test each, so every backend (in-process too) runs the same command.

Run by the harness as `python -m pytest benchmarks/workloads/bench_micro.py -k NAME...`; sizes
and service addresses come from the environment. Each test connects and warms up first and
then measures only its loop (benchmarks.window.Window).
"""
from __future__ import annotations

import json
import os

import pytest

from benchmarks.window import Window

SIZES = json.loads(os.environ.get("SVCTRACE_BENCH_SIZES", "{}"))
ENV = json.loads(os.environ.get("SVCTRACE_BENCH_SERVICES", "{}"))
WARMUP = 200


def _size(name: str, default: int) -> int:
    return int(SIZES.get(name, default))


def _need(key: str) -> str:
    if not ENV.get(key):
        pytest.skip(f"{key} not available")
    return ENV[key]


def test_cpu():
    """Pure Python arithmetic: no syscalls, no sockets."""
    n = _size("cpu", 5_000_000)
    with Window("cpu", 0):
        x = 0
        for i in range(n):
            x += i * i
    assert x > 0


def _libpq(workload: str, host: str) -> None:
    import psycopg2

    n = _size(workload, 20_000)
    conn = psycopg2.connect(host=host, port=ENV["pg_port"], dbname="svctrace", user="svctrace")
    try:
        cur = conn.cursor()
        for _ in range(WARMUP):
            cur.execute("SELECT 1")
            cur.fetchone()
        with Window(workload, n):
            for _ in range(n):
                cur.execute("SELECT 1")
                cur.fetchone()
    finally:
        conn.close()


def test_libpq_tcp():
    """psycopg2 SELECT 1 round trips over TCP 127.0.0.1."""
    _need("pg_port")
    _libpq("libpq-tcp", "127.0.0.1")


def test_libpq_unix():
    """psycopg2 SELECT 1 round trips over the unix socket."""
    _libpq("libpq-unix", _need("pg_socket_dir"))


def test_redis():
    """redis-py PING round trips over TCP."""
    import redis

    n = _size("redis", 20_000)
    client = redis.Redis.from_url(_need("redis_url"))
    try:
        for _ in range(WARMUP):
            client.ping()
        with Window("redis", n):
            for _ in range(n):
                client.ping()
    finally:
        client.close()


def test_kafka():
    """confluent-kafka (librdkafka) produces 100-byte messages to the mock broker, then flushes."""
    from confluent_kafka import Producer

    n = _size("kafka", 400_000)
    producer = Producer({"bootstrap.servers": _need("kafka_bootstrap"), "linger.ms": 5,
                         "queue.buffering.max.messages": 2_000_000})
    payload = b"x" * 100
    for _ in range(WARMUP):
        producer.produce("bench", payload)
    assert producer.flush(30) == 0
    with Window("kafka", n):
        for i in range(n):
            producer.produce("bench", payload)
            if i % 1000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
