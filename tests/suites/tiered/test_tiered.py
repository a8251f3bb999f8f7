"""Sample project for the tiers end-to-end test: each test fails if its services are down."""
import os

import psycopg2
import redis
from confluent_kafka import Producer


def _pg():
    conn = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"], connect_timeout=3)
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
    conn.close()


def _redis():
    assert redis.Redis.from_url(os.environ["TIER_REDIS_URL"], socket_timeout=3).ping()


def _kafka():
    delivered = []
    producer = Producer({"bootstrap.servers": os.environ["TIER_KAFKA_BOOTSTRAP"],
                         "message.timeout.ms": 3000})
    producer.produce("t", b"x", on_delivery=lambda err, msg: delivered.append(err))
    producer.flush(5)
    assert delivered == [None], delivered


def test_pure():
    assert sorted([3, 1, 2]) == [1, 2, 3]


def test_pg_only():
    _pg()


def test_pg_again():
    _pg()


def test_pg_and_redis():
    _pg()
    _redis()


def test_redis_only():
    _redis()


class TestOrders:
    def test_save_produces_to_kafka(self):
        _pg()
        _kafka()

    def test_read(self):
        _pg()


def test_kafka_only():
    _kafka()
