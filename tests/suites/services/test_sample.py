import gc
import os
import socket
import subprocess
import sys
import threading

import psycopg
import psycopg2
import urllib3
from confluent_kafka import Producer

from conftest import redis_client, redis_ping

_PG = {}
_ORPHANS = []

# Module-level code runs while pytest collects: reported as "collection", not as a test.
socket.socket().connect_ex(("127.0.0.1", int(os.environ["SVCTRACE_REFUSED_PORT"])))


def _query(conn):
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1


def test_pg_tcp_psycopg2():
    conn = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"])
    _query(conn)
    conn.close()


def test_pg_unix_psycopg2():
    conn = psycopg2.connect(host=os.environ["SVCTRACE_PG_SOCKET_DIR"], dbname="svctrace", user="svctrace",
                            port=os.environ["SVCTRACE_PG_PORT"])
    _query(conn)
    conn.close()


def test_pg_psycopg3():
    with psycopg.connect(os.environ["SVCTRACE_PG_DSN"]) as conn:
        _query(conn)


def test_pg_pool_open():
    _PG["conn"] = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"])
    _query(_PG["conn"])


def test_pg_pool_reuse():
    """No connect here: only sends on the connection the previous test opened (under
    xdist the previous test may have run in another worker: then open one)."""
    if "conn" not in _PG:
        _PG["conn"] = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"])
    _query(_PG["conn"])


def test_redis_pool_open():
    assert redis_client().ping()


def test_redis_pool_reuse():
    assert redis_client().set("k", "v")


def test_teardown_only(flush_redis):
    assert 1 + 1 == 2


def test_setup_fixture(pg_in_setup):
    assert True


def test_session_fixture_first(pg_session):
    assert pg_session is not None


def test_session_fixture_later(pg_session):
    assert pg_session is not None


def test_http_urllib3():
    http = urllib3.PoolManager()
    response = http.request("GET", os.environ["SVCTRACE_HTTP_URL"])
    assert response.status == 200


def test_refused_connect():
    sock = socket.socket()
    assert sock.connect_ex(("127.0.0.1", int(os.environ["SVCTRACE_REFUSED_PORT"]))) != 0
    sock.close()


def test_subprocess_queries_postgres():
    code = ("import os, psycopg2; c = psycopg2.connect(os.environ['SVCTRACE_PG_DSN']); "
            "cur = c.cursor(); cur.execute('SELECT 1'); c.close()")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_thread_talks_to_redis():
    result = []
    worker = threading.Thread(target=lambda: result.append(redis_client().get("k")),
                              name="bg-redis")
    worker.start()
    worker.join()
    assert result


def _drop(producer):
    producer.purge()
    del producer
    gc.collect()  # rd_kafka_destroy joins librdkafka's threads inside this test


def test_kafka_refused():
    producer = Producer({"bootstrap.servers": os.environ["SVCTRACE_KAFKA_REFUSED"],
                         "message.timeout.ms": 500, "socket.connection.setup.timeout.ms": 1000,
                         "reconnect.backoff.ms": 50})
    producer.produce("t1", b"hello")
    producer.flush(1.0)
    _drop(producer)


def test_kafka_mock_broker():
    delivered = []
    producer = Producer({"bootstrap.servers": os.environ["SVCTRACE_KAFKA_BOOTSTRAP"]})
    producer.produce("t1", b"hello", on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(10.0) == 0
    assert delivered == [None]
    _drop(producer)


def test_kafka_inprocess_mock_is_not_a_service():
    """librdkafka's own mock cluster inside this process: loopback traffic to the process's
    own listener is noise, not a Kafka dependency."""
    delivered = []
    producer = Producer({"bootstrap.servers": "", "test.mock.num.brokers": 1})
    producer.produce("t1", b"hello", on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(10.0) == 0
    assert delivered == [None]
    _drop(producer)


def test_multiprocessing_fork():
    import multiprocessing
    child = multiprocessing.get_context("fork").Process(target=redis_ping)
    child.start()
    child.join()
    assert child.exitcode == 0


def test_multiprocessing_spawn():
    import multiprocessing
    child = multiprocessing.get_context("spawn").Process(target=redis_ping)
    child.start()
    child.join()
    assert child.exitcode == 0


def test_outliving_process():
    """Starts a process that queries Postgres only after this test has ended."""
    # It waits for the next test to release it (or for pytest's exit to close its stdin),
    # not for a guessed time: on a busy machine this test may still be running after 0.5 s.
    code = ("import os, sys, psycopg2; sys.stdin.read(1); "
            "psycopg2.connect(os.environ['SVCTRACE_PG_DSN']).close()")
    _ORPHANS.append(subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE))


def test_after_outliving_process():
    """The orphan's query happens during this test: it must not be charged here."""
    for orphan in _ORPHANS:
        orphan.stdin.write(b"go")
        orphan.stdin.close()
        assert orphan.wait(30) == 0


def test_no_services():
    assert sum(range(10)) == 45
