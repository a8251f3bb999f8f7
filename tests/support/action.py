"""Runs the GitHub Action (action.yml) as a runner would: its composite step's script and env,
inputs filled in from action.yml's defaults, GITHUB_* and RUNNER_* variables of a job."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def copy_action(dest: Path) -> Path:
    """The Action as a runner downloads it: the repository's files, without .git."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-co", "--exclude-standard", "-z"],
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source, target = REPO / name, dest / name
        if not source.exists() and not source.is_symlink():
            continue   # deleted in the working tree, not yet committed
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            os.symlink(os.readlink(source), target)
        else:
            shutil.copy2(source, target)
    return dest


@dataclass
class Step:
    returncode: int
    log: str
    summary: str
    outputs: dict


def _expand(text: str, inputs: dict) -> str:
    return re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: str(inputs[m.group(1)]), text)


def run_action(action: Path, workspace: Path, runner_temp: Path, inputs: dict,
               prefix: tuple[str, ...] = (), job_env: dict | None = None,
               timeout: float = 600) -> Step:
    """One `uses:` of the Action in a job: returns its status, log, summary and outputs."""
    meta = yaml.safe_load((action / "action.yml").read_text())
    unknown = set(inputs) - set(meta["inputs"])
    assert not unknown, f"not inputs of action.yml: {unknown}"
    values = {name: spec.get("default", "") for name, spec in meta["inputs"].items()}
    values.update(inputs)
    (step,) = meta["runs"]["steps"]
    summary, outputs = runner_temp / "step_summary.md", runner_temp / "output.txt"
    summary.write_text("")
    outputs.write_text("")
    script = runner_temp / "step.sh"
    script.write_text(step["run"] + "\n")
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": os.environ.get("HOME", "/root"), "CI": "true", "GITHUB_ACTIONS": "true",
           "GITHUB_WORKSPACE": str(workspace), "GITHUB_ACTION_PATH": str(action),
           "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_OUTPUT": str(outputs),
           "RUNNER_TEMP": str(runner_temp), "RUNNER_OS": "Linux",
           # this machine's package index settings, as a runner's pip.conf would give them
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    env.update(job_env or {})
    env.update({k: _expand(str(v), values) for k, v in step["env"].items()})
    proc = subprocess.run([*prefix, "bash", "--noprofile", "--norc", "-eo", "pipefail",
                           str(script)], cwd=workspace, env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    found = dict(line.split("=", 1) for line in outputs.read_text().splitlines() if "=" in line)
    return Step(proc.returncode, proc.stdout + proc.stderr, summary.read_text(), found)
