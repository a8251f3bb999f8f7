"""Writes the end-to-end workload: a pytest project of many small tests touching PostgreSQL and Redis."""
from __future__ import annotations

from pathlib import Path

PER_FILE = 100

PYPROJECT = '''\
[tool.pytest.ini_options]
addopts = "-p no:cacheprovider"
markers = ["pg: talks to PostgreSQL", "redis: talks to Redis"]

[tool.svctrace]
ringbuf_pages = {ringbuf_pages}

[tool.svctrace.declare]
markers = {{pg = ["postgres"], redis = ["redis"]}}
fixtures = {{pg = ["postgres"], cache = ["redis"]}}
'''

CONFTEST = '''\
import json
import os

import psycopg2
import pytest
import redis

from benchmarks.window import Window

SERVICES = json.loads(os.environ["SVCTRACE_BENCH_SERVICES"])
_WINDOW = []


# The measured window: the main process's session, workers (reaped children) included.
@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):
        _WINDOW.append(Window("suite", 0, children=True).__enter__())


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if _WINDOW and not hasattr(config, "workerinput"):
        _WINDOW.pop().stop()


@pytest.fixture(scope="session")
def pg_conn():
    conn = psycopg2.connect(host="127.0.0.1", port=SERVICES["pg_port"], dbname="svctrace",
                            user="svctrace")
    conn.autocommit = True
    yield conn
    conn.close()


@pytest.fixture(scope="session")
def redis_client():
    client = redis.Redis.from_url(SERVICES["redis_url"])
    yield client
    client.close()


@pytest.fixture
def pg(pg_conn):
    cur = pg_conn.cursor()
    yield cur
    cur.close()


@pytest.fixture
def cache(redis_client, request):
    yield redis_client
    redis_client.delete(request.node.name)
'''

# Four kinds of test, in turn: PostgreSQL, Redis, both, neither. Redis values are not
# compared: other suites on a shared machine may flush the database at any time.
KINDS = (
    ('@pytest.mark.pg\ndef test_{i:05d}_pg(pg):\n'
     '    pg.execute("SELECT %s + 1", ({i},))\n    assert pg.fetchone()[0] == {i} + 1\n'),
    ('@pytest.mark.redis\ndef test_{i:05d}_redis(cache, request):\n'
     '    assert cache.set(request.node.name, {i})\n    cache.get(request.node.name)\n'),
    ('@pytest.mark.pg\n@pytest.mark.redis\ndef test_{i:05d}_both(pg, cache, request):\n'
     '    pg.execute("SELECT %s", ({i},))\n    cache.set(request.node.name, pg.fetchone()[0])\n'),
    ('def test_{i:05d}_pure():\n    assert sorted(range({i} % 50, -1, -1))[0] == 0\n'),
)


def write_suite(root: Path, tests: int, ringbuf_pages: int = 256) -> Path:
    """Create the project under root (tests rounded up to whole files of PER_FILE)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT.format(ringbuf_pages=ringbuf_pages))
    (root / "conftest.py").write_text(CONFTEST)
    files = max(1, -(-tests // PER_FILE))
    for f in range(files):
        body = ["import pytest\n"]
        for j in range(min(PER_FILE, tests - f * PER_FILE) if tests > f * PER_FILE else 0):
            i = f * PER_FILE + j
            body.append("\n" + KINDS[i % len(KINDS)].format(i=i))
        (root / f"test_bench_{f:03d}.py").write_text("\n".join(body))
    return root
