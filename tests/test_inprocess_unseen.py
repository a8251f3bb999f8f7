"""The in-process backend says what it cannot see: a test whose process had loaded libpq or
librdkafka (real psycopg2 and confluent-kafka) gets an incomplete answer, named as such."""
from __future__ import annotations

import subprocess
import sys

from svctrace.capture.inprocess import unseen_clients
from tests.support import e2e

SUITE = '''
import os, socket

def test_first_pure():
    pass

def test_pg():
    import psycopg2
    conn = psycopg2.connect(os.environ["SVCTRACE_PG_DSN"])
    conn.close()

def test_kafka():
    from confluent_kafka import Producer
    producer = Producer({"bootstrap.servers": os.environ["SVCTRACE_KAFKA_BOOTSTRAP"]})
    producer.produce("t", b"x")
    assert producer.flush(30) == 0

def test_later_pure():
    pass
'''


def _cli(cwd, *args):
    return subprocess.run(e2e.SVCTRACE + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)


def test_psycopg2_and_confluent_kafka_make_the_answer_incomplete(tmp_path, sample_env):
    (tmp_path / "test_c.py").write_text(SUITE)
    (tmp_path / "pyproject.toml").write_text(sample_env["_PYPROJECT"])
    report, proc = e2e.run_svctrace("inprocess", tmp_path, sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = report["tests"]
    # what the user saw: no services for the libpq and Kafka tests...
    assert tests["test_c.py::test_pg"]["services"] == []
    assert tests["test_c.py::test_kafka"]["services"] == []
    # ...now each test says which loaded library the backend could not see
    assert tests["test_c.py::test_first_pure"]["unseen_clients"] == []
    assert tests["test_c.py::test_pg"]["unseen_clients"] == ["libpq (psycopg2)"]
    both = ["libpq (psycopg2)", "librdkafka (confluent_kafka)"]
    assert tests["test_c.py::test_kafka"]["unseen_clients"] == both
    assert tests["test_c.py::test_later_pure"]["unseen_clients"] == both  # still loaded
    assert ("  INCOMPLETE: the inprocess backend cannot see C client libraries that tests' "
            "processes had loaded: libpq (psycopg2) in 3 tests, librdkafka (confluent_kafka) "
            "in 2 tests; what those tests reached through them is missing") in proc.stderr

    explain = _cli(tmp_path, "explain", "report.json", "test_c.py::test_pg")
    assert explain.returncode == 0, explain.stderr
    assert explain.stdout.splitlines()[1:3] == [
        "  needs: no services",
        "  INCOMPLETE: its process had loaded libpq (psycopg2), which the inprocess backend "
        "cannot see: services this test reached through them are missing here (the ebpf or "
        "strace backend sees them)"]
    pure = _cli(tmp_path, "explain", "report.json", "test_c.py::test_first_pure").stdout
    assert "INCOMPLETE" not in pure
    markdown = _cli(tmp_path, "summary", "report.json", "--markdown").stdout
    assert "> **INCOMPLETE: the inprocess backend cannot see" in markdown


def test_unseen_clients_reads_maps_lines():
    maps = "\n".join([
        "7f0-7f1 r-xp 0 08:01 1 /venv/site-packages/psycopg2_binary.libs/libpq-a17e.so.5.17",
        "7f1-7f2 r-xp 0 08:01 2 /venv/site-packages/confluent_kafka.libs/librdkafka-0cb9.so.1",
        "7f2-7f3 r-xp 0 08:01 3 /usr/lib/x86_64-linux-gnu/libpq.so.5.15",
        "7f3-7f4 r-xp 0 08:01 4 /venv/site-packages/grpc/_cython/cygrpc.cpython-311.so",
        "7f4-7f5 r-xp 0 08:01 5 /usr/lib/x86_64-linux-gnu/libpthread.so.0",
        "7f5-7f6 rw-p 0 00:00 0 [heap]",
        "7f6-7f7 r-xp 0 08:01 6 /venv/site-packages/psycopg_binary.libs/libpq-e9b5.so.5.18"])
    assert unseen_clients(maps) == ("grpc core", "libpq", "libpq (psycopg)",
                                    "libpq (psycopg2)", "librdkafka (confluent_kafka)")
    here = open("/proc/self/maps").read()
    assert ("librdkafka (confluent_kafka)" in unseen_clients(here)) == \
        ("confluent_kafka.cimpl" in sys.modules)
