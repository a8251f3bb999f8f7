"""Tier selection inside pytest: `--svctrace-plan PLAN --svctrace-tier NAME [--svctrace-shard i/n]`."""
from __future__ import annotations

import os

import pytest

from pytest_svctrace.workers import OWNER_KEY
from svctrace.contract import ENV_OWNER, ENV_SELECT
from svctrace.errors import SvctraceError


def addoption(group) -> None:
    group.addoption("--svctrace-plan", metavar="PLAN", default=None,
                    help="tier plan written by `svctrace tiers` (JSON)")
    group.addoption("--svctrace-tier", metavar="NAME", default=None,
                    help="run only the tests the plan puts in this tier; tests the plan "
                         "does not know go to its most complete tier")
    group.addoption("--svctrace-shard", metavar="I/N", default=None,
                    help="with --svctrace-tier: run shard I of N (1-based), balanced by the "
                         "durations recorded in the plan")


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--svctrace-shard {text!r}: expected I/N, e.g. 1/4") from None
    if not 1 <= index <= count:
        raise pytest.UsageError(f"--svctrace-shard {text!r}: I must be within 1..N")
    return index, count


def _owns_run(config: pytest.Config) -> bool:
    """The pytest `svctrace run` started (it claimed the pipe, or nobody did yet) or one of
    its xdist workers; not a pytest a test runs."""
    owner = os.environ.get(ENV_OWNER)
    if owner in (None, str(os.getpid())):
        return True
    workerinput = getattr(config, "workerinput", None)
    return workerinput is not None and workerinput.get(OWNER_KEY) == owner


def _select_listed(config: pytest.Config, items: list, path: str) -> None:
    """Keep the tests whose node ids the file lists (svctrace prove's re-runs)."""
    try:
        with open(path, encoding="utf-8") as fh:
            wanted = {line.rstrip("\n") for line in fh if line.strip()}
    except OSError as exc:
        raise pytest.UsageError(f"{ENV_SELECT}={path}: {exc.strerror}") from None
    kept = [item for item in items if item.nodeid in wanted]
    deselected = [item for item in items if item.nodeid not in wanted]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter and not hasattr(config, "workerinput"):
        reporter.write_line(f"svctrace: kept the {len(kept)} listed tests of {len(wanted)}, "
                            f"deselected {len(deselected)}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    listed = os.environ.get(ENV_SELECT)
    if listed and _owns_run(config):
        _select_listed(config, items, listed)
    plan_path, tier = config.getoption("svctrace_plan"), config.getoption("svctrace_tier")
    if not plan_path and not tier:
        return
    if not (plan_path and tier):
        raise pytest.UsageError("--svctrace-plan and --svctrace-tier go together")
    from svctrace.plan.tiers import load_plan, shard_assignment, tier_of
    try:
        plan = load_plan(plan_path)
    except SvctraceError as exc:
        raise pytest.UsageError(str(exc)) from None
    if tier not in plan["tiers"]:
        raise pytest.UsageError(f"--svctrace-tier {tier!r}: the plan has tiers "
                                f"{', '.join(plan['tiers'])}")
    kept = [item for item in items if tier_of(plan, item.nodeid) == tier]
    unknown = sum(1 for item in kept if item.nodeid not in plan["assignments"])
    shard = config.getoption("svctrace_shard")
    if shard:
        index, count = _parse_shard(shard)
        shards = shard_assignment(plan, [item.nodeid for item in kept], count)
        kept = [item for item in kept if shards[item.nodeid] == index]
    selected = {id(item) for item in kept}
    deselected = [item for item in items if id(item) not in selected]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept
    services = ", ".join(plan["tiers"][tier]["services"]) or "no services"
    message = (f"svctrace: tier {tier!r} ({services}): kept {len(kept)} tests"
               + (f" (shard {shard})" if shard else "")
               + f", deselected {len(deselected)}"
               + (f"; {unknown} not in the plan, kept here because this tier is the most "
                  "complete" if unknown else ""))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(message)
