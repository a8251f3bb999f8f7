"""The wheel and sdist users install: built with `python -m build`, checked by twine, then
installed into a fresh venv that cannot see this checkout and used from there."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

import svctrace
from tests.support.backends import needs_backend

REPO = Path(__file__).resolve().parents[1]
BPF_SOURCES = {p.name for p in (REPO / "bpf").iterdir() if p.suffix in (".c", ".h")}


def _run(*cmd, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("timeout", 600)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)


def _head() -> str:
    return _run("git", "-C", REPO, "rev-parse", "--short=12", "HEAD", check=True).stdout.strip()


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    """`python -m build` of this checkout: the sdist, and the wheel built from it."""
    out = tmp_path_factory.mktemp("dist")
    proc = _run(sys.executable, "-m", "build", "--outdir", out, REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("svctrace-*.whl")
    (sdist,) = out.glob("svctrace-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def test_twine_check_passes(dist):
    proc = _run(sys.executable, "-m", "twine", "check", "--strict", dist["wheel"], dist["sdist"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_wheel_from_the_sdist_holds_the_bpf_sources_and_commit(dist):
    """`python -m build` makes the wheel from the unpacked sdist, where bpf/ is no longer a
    link (test_core_units checks the names of a wheel built from the tree)."""
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    assert {n.split("/")[-1] for n in names if n.startswith("svctrace/bpf/")
            and n.endswith((".c", ".h"))} == BPF_SOURCES
    with zipfile.ZipFile(dist["wheel"]) as whl:
        commit = whl.read("svctrace/COMMIT").decode().strip()
    # built from this checkout (through its sdist): the checkout's commit, -dirty if edited
    assert commit.split("-")[0] == _head(), commit


def test_sdist_carries_the_sources_and_commit(dist):
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {f"tracer/svctrace/bpf/{n}" for n in BPF_SOURCES} <= names
    assert {"setup.py", "pyproject.toml", "README.md", "tracer/svctrace/COMMIT",
            "plugin/pytest_svctrace/plugin.py"} <= names


def test_version_comes_from_one_place():
    """pyproject takes the version from svctrace.__version__; --version adds the commit."""
    assert 'dynamic = ["version"]' in (REPO / "pyproject.toml").read_text()
    proc = _run(sys.executable, "-m", "svctrace", "--version", check=True)
    assert proc.stdout.startswith(f"svctrace, version {svctrace.__version__} (commit {_head()}"), proc.stdout


def _hidden(*cmd, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run cmd in a mount namespace where this checkout is an empty tmpfs."""
    return _run("unshare", "--mount", "--", "sh", "-c", 'mount -t tmpfs tmpfs "$0" && exec "$@"',
                REPO, *cmd, cwd=cwd, env=env)


@needs_backend("ebpf")
@pytest.mark.skipif(os.geteuid() != 0, reason="hiding the checkout needs root (a mount namespace)")
def test_wheel_in_a_fresh_venv_traces_a_suite_in_another_venv(dist, tmp_path):
    """Installed from the wheel alone, with the checkout hidden: doctor, a traced run of a
    small suite whose own venv has no svctrace, and the HTML report."""
    tool, suite_venv = tmp_path / "svctrace-venv", tmp_path / "suite-venv"
    pip_env = {**os.environ, "PIP_ROOT_USER_ACTION": "ignore"}
    for venv, packages in ((tool, [dist["wheel"]]), (suite_venv, ["pytest"])):
        _run(sys.executable, "-m", "venv", venv, check=True)
        proc = _run(venv / "bin" / "python", "-m", "pip", "install", "-q", *packages, env=pip_env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert _run(suite_venv / "bin" / "python", "-c", "import svctrace").returncode != 0

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    threading.Thread(target=lambda: server.accept()[0].close(), daemon=True).start()
    project = tmp_path / "project"
    (project / "tests").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        f'[tool.svctrace.services]\nbilling = ["127.0.0.1:{port}"]\n')
    (project / "tests" / "test_one.py").write_text(
        "import socket\n\ndef test_billing():\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n\n"
        "def test_nothing():\n    pass\n")
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path)}
    bin_ = tool / "bin"
    try:
        version = _hidden(bin_ / "svctrace", "--version", cwd=project, env=env)
        assert version.returncode == 0, version.stderr
        assert version.stdout.startswith(f"svctrace, version {svctrace.__version__} (commit {_head()}")
        where = _hidden(bin_ / "python", "-c", "import svctrace, pytest_svctrace; "
                        "print(svctrace.__file__, pytest_svctrace.__file__)", cwd=project, env=env)
        assert str(REPO) not in where.stdout and str(tool) in where.stdout, where.stdout
        doctor = _hidden(bin_ / "svctrace", "doctor", cwd=project, env=env)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        run = _hidden(bin_ / "svctrace", "run", "--backend", "ebpf", "--report", "r.json", "--",
                      suite_venv / "bin" / "python", "-m", "pytest", "-q", "-p",
                      "no:cacheprovider", "tests", cwd=project, env=env)
        assert run.returncode == 0, run.stdout + run.stderr
        html = _hidden(bin_ / "svctrace", "html", "r.json", "-o", "html", cwd=project, env=env)
        assert html.returncode == 0, html.stdout + html.stderr
    finally:
        server.close()
    report = json.loads((project / "r.json").read_text())
    assert report["tests"]["tests/test_one.py::test_billing"]["services"] == ["billing"]
    assert report["tests"]["tests/test_one.py::test_nothing"]["services"] == []
    page = (project / "html" / "index.html").read_text()
    assert "tests/test_one.py::test_billing" in page
