"""Sample project for svctrace's end-to-end tests: real Postgres, Redis, Kafka, HTTP.

Connection facts come from the environment the outer test sets (SVCTRACE_PG_DSN, ...).
Each test's expected services per phase are in EXPECTED of tests/e2e_expectations.py.
"""
import os

import psycopg2
import pytest
import redis

_REDIS = {}


def redis_client():
    """One pooled client for the whole session: later tests reuse its connection."""
    if "client" not in _REDIS:
        _REDIS["client"] = redis.Redis.from_url(os.environ["SVCTRACE_REDIS_URL"])
    return _REDIS["client"]


def redis_ping():
    """Run in multiprocessing children; lives here because a spawned child imports the
    module of its target, and test_sample.py touches a service while being imported."""
    redis.Redis.from_url(os.environ["SVCTRACE_REDIS_URL"]).ping()


@pytest.fixture
def flush_redis():
    """The framework-teardown pattern: FLUSHDB after the test, nothing before."""
    yield
    redis_client().flushdb()


@pytest.fixture
def pg_in_setup():
    conn = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"])
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()
    yield


@pytest.fixture(scope="session")
def pg_session():
    """Session-scoped: talks to Postgres once, in the setup of the first test using it."""
    conn = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"])
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    yield conn
    conn.close()
