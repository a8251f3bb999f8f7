import uuid

import redis

from conftest import pg_value, redis_client


def cached_square(n):
    """A read-through cache that degrades: Redis first, Postgres computes on a miss or when
    Redis is down."""
    key = f"square:{n}:{uuid.uuid4().hex}"  # always a miss: Postgres is always asked
    try:
        hit = redis_client().get(key)
        if hit is not None:
            return int(hit)
    except redis.RedisError:
        return pg_value(f"SELECT {n} * {n}")
    value = pg_value(f"SELECT {n} * {n}")
    try:
        redis_client().set(key, value, ex=5)
    except redis.RedisError:
        pass
    return value


def record_metric(name):
    """Best effort: metrics never fail a request."""
    try:
        redis_client().incr(f"metric:{name}")
    except redis.RedisError:
        pass


def test_read_through_cache(warm_cache):
    assert cached_square(7) == 49


def test_warm_up_only(warm_cache):
    assert sum(range(10)) == 45


def test_best_effort_metrics():
    record_metric("checkout")
    assert "".join(reversed("abc")) == "cba"


def test_needs_redis():
    client = redis_client()
    client.set("prove:key", "value")
    assert client.get("prove:key") == b"value"


def test_needs_postgres():
    assert pg_value("SELECT 40 + 2") == 42


def test_fails_in_any_case():
    record_metric("broken")
    assert 1 + 1 == 3, "this test fails whatever is refused"


def test_no_services():
    assert sorted([3, 1, 2]) == [1, 2, 3]
