"""Observer effect (issue 13): a librdkafka client created and destroyed within a few ms.

librdkafka's broker thread connects to the bootstrap broker right after the client is
created; a test that destroys the client at once races that connect. A tracer that slows
the client's threads (strace stops them on every traced system call, not only on the ones
attribution needs) lets the destroy win, and the connect a plain run makes never happens:
kafka vanishes from the test. eBPF changes no timing that matters here.
"""
from __future__ import annotations

from tests.support import e2e
from tests.support.backends import needs_backend as needs

SHORT_LIVED = '''\
import os

import pytest
from confluent_kafka import Producer


@pytest.mark.parametrize("n", range(8))
def test_short_lived_producer(n):
    producer = Producer({"bootstrap.servers": os.environ["SVCTRACE_KAFKA_BOOTSTRAP"],
                         "socket.connection.setup.timeout.ms": 1000})
    producer.poll(0.005)  # a few ms of life: long enough for the broker thread's connect
    del producer           # rd_kafka_destroy
'''


def _suite(tmp_path, env):
    root = tmp_path / "short"
    root.mkdir()
    (root / "pyproject.toml").write_text(env["_PYPROJECT"])
    (root / "test_short.py").write_text(SHORT_LIVED)
    return root


def _kafka_tests(report: dict) -> set[str]:
    return {nodeid for nodeid, test in report["tests"].items()
            if "kafka" in test.get("services", [])}


@needs("ebpf")
def test_ebpf_sees_the_short_lived_clients_connect(tmp_path, sample_env):
    report, proc = e2e.run_svctrace("ebpf", _suite(tmp_path, sample_env), sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_kafka_tests(report)) == 8


@needs("strace")
def test_strace_sees_the_short_lived_clients_connect(tmp_path, sample_env):
    report, proc = e2e.run_svctrace("strace", _suite(tmp_path, sample_env), sample_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_kafka_tests(report)) == 8
