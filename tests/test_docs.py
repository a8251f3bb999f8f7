"""The docs users read: the mkdocs site builds strictly, the Action and the documented
workflows pass GitHub's schemas (offline), the README stays short and its tour runs."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.backends import needs_backend

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKFLOWS = sorted((REPO / "docs" / "workflows").glob("*.yml"))
TEST_COMMAND = ".venv/bin/python -m pytest tests/ -p no:cacheprovider -q -rs"


def _offline(cmd: list[str]) -> list[str]:
    """No network where we can take it away (root): the schemas must ship in the package."""
    return ["unshare", "--net", "--", *cmd] if os.geteuid() == 0 else cmd


def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ci = (tmp_path / "site" / "ci" / "index.html").read_text()
    for workflow in WORKFLOWS:   # the snippets were included, not left as markers
        first_name = re.search(r"^name: (.+)$", workflow.read_text(), re.M).group(1)
        assert first_name in ci, workflow


def test_every_docs_workflow_is_shown_in_ci_md():
    text = (REPO / "docs" / "ci.md").read_text()
    assert len(WORKFLOWS) >= 3
    for workflow in WORKFLOWS:
        assert f'--8<-- "docs/workflows/{workflow.name}"' in text, workflow.name


@pytest.mark.parametrize("path, schema", [
    (REPO / "action.yml", "vendor.github-actions"),
    *[(w, "vendor.github-workflows") for w in WORKFLOWS],
], ids=lambda v: v.name if isinstance(v, Path) else v)
def test_schema(path, schema):
    proc = subprocess.run(_offline([str(BIN / "check-jsonschema"), "--builtin-schema", schema,
                                    str(path)]), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_can_fail(tmp_path):
    """The check really validates: a step with both `uses` and `run` is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                   "      - uses: actions/checkout@v4\n        run: echo\n")
    proc = subprocess.run(_offline([str(BIN / "check-jsonschema"), "--builtin-schema",
                                    "vendor.github-workflows", str(bad)]),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0


def _docs_texts():
    yield REPO / "README.md"
    yield from sorted((REPO / "docs").rglob("*.md"))
    yield from WORKFLOWS


def test_installs_are_pinned():
    """No bare `pip install svctrace` in a command, no Action used by a branch or tag."""
    for path in _docs_texts():
        for line in path.read_text().splitlines():
            if "There is no `svctrace` package on PyPI" in line:
                continue   # the one line that warns against it
            bare = re.search(r"pip install\b[^#\n`;]*?(?<![\w/.@+-])['\"]?svctrace(?:\[[\w,]+\])?"
                             r"['\"]?(?!\s*@)(?=[\s`'\"]|$)", line)
            assert not bare, f"{path.name}: {line}"
            if re.search(r"pip install\s+['\"]?svctrace\s*@", line):
                assert re.search(r"git\+\S+@(?:[0-9a-f]{40}|FULL_COMMIT_SHA)\b", line), line
            used = re.search(r"uses: (\S+/svctrace)@([^\s`]+)", line)
            if used:
                assert re.fullmatch(r"[0-9a-f]{40}|FULL_COMMIT_SHA", used.group(2)), line


def test_readme_is_short_and_keeps_the_two_commands():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    assert f"```\n{TEST_COMMAND}\n```" in text
    assert "```\nsudo scripts/setup.sh\n```" in text
    ci = (REPO / ".ci" / "run").read_text()
    assert f"TEST_CMD=({TEST_COMMAND.replace(' tests/ -p', ' tests/ -p')})" in ci


def _tour() -> tuple[str, str]:
    """The README tour's commands: everything before the guard's run, and that run."""
    text = (REPO / "README.md").read_text()
    block = re.search(r"## A 60-second tour.*?```sh\n(.*?)```", text, re.S).group(1)
    before, guard = block.rsplit("\nsudo -E", 1)
    return before, "sudo -E" + guard


@needs_backend("ebpf")
@pytest.mark.skipif(os.geteuid() != 0, reason="the tour's `svctrace run` needs root")
def test_readme_tour_runs_as_written(services):
    demo = REPO / "examples" / "demo"
    made = [demo / "svctrace-report.json", demo / "plan.json", demo / "svctrace-html",
            demo / "proven.json"]
    before, guard = _tour()
    if not shutil.which("sudo"):   # the README says: as root, leave out `sudo -E`
        before, guard = before.replace("sudo -E ", ""), guard.replace("sudo -E ", "")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHON"))}
    try:
        first = subprocess.run(["bash", "-e", "-c", before], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=300)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "tests needing each service (observed in the test, unless said): postgres 1, " \
               "redis 1" in first.stdout
        assert "needs: postgres" in first.stdout
        assert (demo / "svctrace-html" / "index.html").exists()
        assert "\ntest_demo.py::test_save_order\n" in first.stdout  # svctrace list
        proven = json.loads((demo / "proven.json").read_text())
        assert proven["tests"]["test_demo.py::test_save_order"]["needs_proof"] == \
            {"postgres": "needed"}
        plan = json.loads((demo / "plan.json").read_text())
        assert plan["assignments"] == {"test_demo.py::test_save_order": "db",
                                       "test_demo.py::test_cache_hit": "db",
                                       "test_demo.py::test_price_math": "unit"}
        second = subprocess.run(["bash", "-c", before.split("\ncd examples/demo")[0]
                                 + "\ncd examples/demo\n" + guard],
                                cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 1, second.stdout + second.stderr
        assert "guard: test_demo.py::test_save_order tried postgres, denied by --deny" \
            in second.stderr + second.stdout
        assert "1 failed, 2 passed" in second.stdout
    finally:
        for path in made:
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
