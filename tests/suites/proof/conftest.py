"""A suite whose tests mostly *use* Redis without needing it, beside tests that need Redis or
Postgres: what `svctrace prove` must tell apart (its expected verdicts: tests/test_e2e_prove.py).
"""
import os

import psycopg2
import pytest
import redis


def redis_client():
    # No retries: a refused connect should fail at once, as in most production clients.
    return redis.Redis.from_url(os.environ["SVCTRACE_REDIS_URL"], socket_timeout=2,
                                socket_connect_timeout=2, retry_on_timeout=False)


def pg_value(sql):
    conn = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"])
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def warm_cache():
    """The warm-up fixture that swallows errors: a cold cache is only slower."""
    try:
        redis_client().set("warm", "1")
    except redis.RedisError:
        pass
    yield
