"""`svctrace tiers` judges a report's destinations again with the current service rules:
a rule added after the run names what the report still calls by its address."""
from __future__ import annotations

import json
import socket
import subprocess
import sys

from svctrace.events import Destination
from svctrace.join.services import ServiceMap
from svctrace.report.rejudge import Rejudge, parse_label
from tests.support import e2e

SUITE = """
import os, socket
def test_web():
    socket.create_connection(("127.0.0.1", int(os.environ["WEB_PORT"]))).close()
def test_pure():
    pass
"""
TIERS = """
[[tool.svctrace.tiers]]
name = "web"
services = ["web"]
startup_s = 5
[[tool.svctrace.tiers]]
name = "full"
services = ["web", "postgres", "redis"]
startup_s = 100
"""


def _svctrace(cwd, *args, env=None):
    return subprocess.run(e2e.SVCTRACE + list(args), cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env, stdin=subprocess.DEVNULL)


def test_a_rule_added_after_the_run_counts_in_tiers(tmp_path):
    """As the user did: run, see the address in the plan, add a rule, plan again."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    (tmp_path / "test_web.py").write_text(SUITE)
    (tmp_path / "pyproject.toml").write_text("[tool.svctrace]\n" + TIERS)
    try:
        run = _svctrace(tmp_path, "run", "-b", "inprocess", "-q", "--progress", "0", "-o",
                        "r.json", "--", sys.executable, "-m", "pytest", "-q",
                        "-p", "no:cacheprovider", env={**e2e.child_env({}),
                                                        "WEB_PORT": str(port)})
    finally:
        listener.close()
    assert run.returncode == 0, run.stdout + run.stderr
    label = f"tcp:127.0.0.1:{port}"
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["tests"]["test_web.py::test_web"]["needs"] == [label]
    before = _svctrace(tmp_path, "tiers", "r.json", "--plan-out", "before.json")
    assert before.returncode == 0, before.stderr
    assert f"`test_web.py::test_web`: {label}" in before.stdout  # needs what no tier starts
    assert "by the current service rules" not in before.stderr

    (tmp_path / "pyproject.toml").write_text(
        f'[tool.svctrace]\n[tool.svctrace.services]\nweb = ["127.0.0.1:{port}"]\n' + TIERS)
    after = _svctrace(tmp_path, "tiers", "r.json", "--plan-out", "after.json")
    assert after.returncode == 0, after.stderr
    assert f"svctrace tiers: {label} is now web by the current service rules (1 test)" \
        in after.stderr
    plan = json.loads((tmp_path / "after.json").read_text())
    assert plan["assignments"]["test_web.py::test_web"] == "web"
    assert plan["uncovered"] == {}
    assert label not in after.stdout
    listed = _svctrace(tmp_path, "list", "r.json", "--needs", "web")
    assert listed.stdout == "test_web.py::test_web\n", listed.stderr
    # the report itself is untouched: it says what the run saw
    assert json.loads((tmp_path / "r.json").read_text()) == report


def _test(services: dict[str, list[str]], **extra) -> dict:
    return {"services": sorted(services), "inherited": {}, "declared": [], "denied": [],
            "needs": sorted(services), "baseline": [],
            "evidence": {s: {"destinations": d} for s, d in services.items()}, **extra}


def test_names_and_noise_and_partial_evidence():
    many = [f"tcp:10.0.0.{i}:9092" for i in range(8)]  # MAX_KEPT: there may have been more
    report = {"tests": {
        "t.py::a": _test({"tcp:10.0.0.5:8080": ["tcp:10.0.0.5:8080"],
                          "unix:/run/app.sock": ["unix:/run/app.sock"]}),
        "t.py::b": _test({"kafka": many}),
        "t.py::c": _test({"postgres": ["tcp:127.0.0.1:6000"]}, declared=["redis"]),
    }, "fixtures": {}}
    smap = ServiceMap({"api": ["10.0.0.5:8080"], "events": ["10.0.0.0/29:9092"]},
                      ignore=["unix:/run/app.sock"])
    judged = Rejudge(smap)
    out = judged.report(report, {"redis"})
    assert out["tests"]["t.py::a"]["needs"] == ["api"]          # named; the socket ignored
    assert out["tests"]["t.py::b"]["needs"] == ["events", "kafka"]  # 8 kept: kafka stays
    # no rule names port 6000 now (another config than the run's): the run's name stays
    assert out["tests"]["t.py::c"]["needs"] == ["postgres"]
    assert out["tests"]["t.py::c"]["baseline"] == ["redis"]
    assert report["tests"]["t.py::a"]["needs"] == ["tcp:10.0.0.5:8080",
                                                   "unix:/run/app.sock"]  # a copy
    assert judged.lines() == [
        "kafka is now events by the current service rules (1 test)",
        "tcp:10.0.0.5:8080 is now api by the current service rules (1 test)",
        "unix:/run/app.sock is now ignored (noise or an `ignore` rule) by the current "
        "service rules (1 test)",
        "1 test kept only 8 destinations of a service in the report: judged on those, its "
        "other destinations keep the run's names (run svctrace again to judge every one)"]


def test_parse_label_reads_every_label_back():
    for dest in (Destination("inet", "tcp", "10.0.0.5", 80),
                 Destination("inet6", "udp", "::1", 53),
                 Destination("unix", "unix", "/var/run/postgresql/.s.PGSQL.5432"),
                 Destination("unix", "unix", "@abstract")):
        assert parse_label(dest.label()) == dest
    assert parse_label("postgres") is None and parse_label("redis-cluster") is None
