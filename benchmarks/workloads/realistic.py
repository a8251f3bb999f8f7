"""Writes the realistic workload: a few hundred 10-50 ms tests doing real PostgreSQL/Redis work, with fixtures and a subprocess."""
from __future__ import annotations

from pathlib import Path

from benchmarks.workloads.suite import CONFTEST as _SUITE_CONFTEST

PER_FILE = 50

PYPROJECT = '''\
[tool.pytest.ini_options]
addopts = "-p no:cacheprovider"

[tool.svctrace]
ringbuf_pages = {ringbuf_pages}
'''

# The suite's measuring window and session connections, plus a per-test table and data.
CONFTEST = _SUITE_CONFTEST + '''

@pytest.fixture
def table(pg_conn, request):
    name = "bench_" + request.node.name.replace("[", "_").replace("]", "")[-40:]
    cur = pg_conn.cursor()
    cur.execute(f"CREATE TEMP TABLE {name} (id int primary key, payload text)")
    yield cur, name
    cur.execute(f"DROP TABLE {name}")
    cur.close()


@pytest.fixture
def rows():
    return [(i, "x" * (i % 64)) for i in range(200)]
'''

# Five kinds in turn; each takes ~10-50 ms here: database round trips, a server-side wait
# standing for a slower query, Python work on the results, one in five starts a process.
KINDS = (
    ('def test_{i:04d}_orm_like(table, rows):\n'
     '    cur, name = table\n'
     '    cur.executemany(f"INSERT INTO {{name}} VALUES (%s, %s)", rows)\n'
     '    cur.execute(f"SELECT id, length(payload) FROM {{name}} WHERE id % 7 = 0")\n'
     '    got = cur.fetchall()\n'
     '    assert sum(n for _, n in got) >= 0 and len(got) == 29\n'),
    ('def test_{i:04d}_cache(redis_client, request):\n'
     '    key = request.node.name\n'
     '    pipe = redis_client.pipeline()\n'
     '    for j in range(300):\n'
     '        pipe.hset(key, str(j), j * {i})\n'
     '    pipe.execute()\n'
     '    data = redis_client.hgetall(key)  # not compared: a shared Redis may be flushed\n'
     '    assert all(int(v) >= 0 for v in data.values())\n'
     '    redis_client.delete(key)\n'),
    ('def test_{i:04d}_report(pg_conn):\n'
     '    cur = pg_conn.cursor()\n'
     '    cur.execute("SELECT pg_sleep(0.01), sum(g) FROM generate_series(1, 20000) g")\n'
     '    total = cur.fetchone()[1]\n'
     '    text = json.dumps([{{"n": n, "sq": n * n}} for n in range(3000)])\n'
     '    assert total == 200010000 and len(json.loads(text)) == 3000\n'),
    ('def test_{i:04d}_both(table, redis_client, request):\n'
     '    cur, name = table\n'
     '    cur.execute(f"INSERT INTO {{name}} SELECT g, md5(g::text) FROM generate_series(1, 500) g")\n'
     '    cur.execute(f"SELECT payload FROM {{name}} ORDER BY id LIMIT 50")\n'
     '    for (payload,) in cur.fetchall():\n'
     '        redis_client.set(request.node.name + payload[:6], payload, ex=60)\n'
     '    assert hashlib.sha256(repr(sorted(range({i}, {i} + 20000))).encode()).digest()\n'),
    ('def test_{i:04d}_tool():\n'
     '    out = subprocess.run([sys.executable, "-S", "-c", "print(6 * 7)"],\n'
     '                         capture_output=True, text=True, check=True).stdout\n'
     '    assert out.strip() == "42"\n'),
)
HEADER = "import hashlib\nimport json\nimport subprocess\nimport sys\n\nimport pytest\n"


def write_realistic(root: Path, tests: int, ringbuf_pages: int = 256) -> Path:
    """Create the project under root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT.format(ringbuf_pages=ringbuf_pages))
    (root / "conftest.py").write_text(CONFTEST)
    for f in range(max(1, -(-tests // PER_FILE))):
        body = [HEADER]
        for i in range(f * PER_FILE, min(tests, (f + 1) * PER_FILE)):
            body.append("\n" + KINDS[i % len(KINDS)].format(i=i))
        (root / f"test_real_{f:03d}.py").write_text("\n".join(body))
    return root


TRIVIAL = "def test_nothing():\n    assert True\n"


def write_trivial(root: Path, ringbuf_pages: int = 256) -> Path:
    """A one-test project: what a traced run costs beyond pytest itself (start-up)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT.format(ringbuf_pages=ringbuf_pages))
    (root / "test_trivial.py").write_text(TRIVIAL)
    return root
