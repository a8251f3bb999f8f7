"""The README's 60-second tour: tests that touch PostgreSQL, Redis, or nothing.
Connection facts come from `scripts/services.py env` (svctrace's own test services)."""
import os

import psycopg2
import redis


def test_save_order():
    conn = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"])
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()


def test_cache_hit():
    redis.Redis.from_url(os.environ["SVCTRACE_REDIS_URL"]).ping()


def test_price_math():
    assert round(19.999, 2) == 20.0
