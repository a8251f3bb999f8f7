"""Tier selection inside pytest: `--svctrace-plan PLAN --svctrace-tier NAME [--svctrace-shard i/n]`,
or the same from `svctrace run --plan PLAN --tier NAME [--shard i/n]` (contract.SELECTION)."""
from __future__ import annotations

import os

import pytest

from svctrace.contract import ENV_PLAN, ENV_SELECT, ENV_SHARD, ENV_TIER
from svctrace.errors import SvctraceError
from svctrace.words import counted

FROM_RUN = pytest.StashKey[tuple]()  # (plan, tier, shard) given to `svctrace run`
LISTED = pytest.StashKey[str]()  # the file of node ids `svctrace prove` re-runs


def addoption(group) -> None:
    group.addoption("--svctrace-plan", metavar="PLAN", default=None,
                    help="tier plan written by `svctrace tiers` (JSON)")
    group.addoption("--svctrace-tier", metavar="NAME", default=None,
                    help="run only the tests the plan puts in this tier; tests the plan "
                         "does not know go to its most complete tier")
    group.addoption("--svctrace-shard", metavar="I/N", default=None,
                    help="with --svctrace-tier: run shard I of N (1-based), balanced by the "
                         "durations recorded in the plan")


def take_from_run(config: pytest.Config) -> None:
    """In the run's owner pytest and its xdist workers (never a nested pytest, whose tests
    are not the run's): the tier `svctrace run --plan/--tier` selects, and the node ids
    `svctrace prove` lists."""
    if os.environ.get(ENV_TIER):
        config.stash[FROM_RUN] = (os.environ.get(ENV_PLAN), os.environ[ENV_TIER],
                                  os.environ.get(ENV_SHARD) or None)
    if os.environ.get(ENV_SELECT):
        config.stash[LISTED] = os.environ[ENV_SELECT]


def _options(config: pytest.Config) -> tuple[str | None, str | None, str | None, str]:
    """(plan, tier, shard, how the user spelled them)."""
    given = (config.getoption("svctrace_plan"), config.getoption("svctrace_tier"),
             config.getoption("svctrace_shard"))
    from_run = config.stash.get(FROM_RUN, None)
    if from_run and not any(given):
        return (*from_run, "svctrace run --plan/--tier")
    return (*given, "--svctrace-plan/--svctrace-tier")


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
    listed = config.stash.get(LISTED, None)
    if listed:
        _select_listed(config, items, listed)
    plan_path, tier, shard, spelled = _options(config)
    if not plan_path and not tier:
        return
    if not (plan_path and tier):
        raise pytest.UsageError(f"{spelled} go together")
    from svctrace.plan.tiers import parse_shard, shard_assignment, tier_of
    from svctrace.report.files import load_tier
    from svctrace.report.model import Plan
    try:
        plan = Plan.from_dict(load_tier(plan_path, tier, "--svctrace-tier"))
        index, count = parse_shard(shard, "--svctrace-shard") if shard else (1, 1)
    except SvctraceError as exc:
        raise pytest.UsageError(str(exc)) from None
    kept = [item for item in items if tier_of(plan, item.nodeid) == tier]
    unknown = sum(1 for item in kept if item.nodeid not in plan.assignments)
    if shard:
        shards = shard_assignment(plan, [item.nodeid for item in kept], count)
        kept = [item for item in kept if shards[item.nodeid] == index]
    selected = {id(item) for item in kept}
    deselected = [item for item in items if id(item) not in selected]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = kept
    services = ", ".join(plan.tiers[tier].services) or "no services"
    message = (f"svctrace: tier {tier!r} ({services}): kept {counted(len(kept), 'test')}"
               + (f" (shard {shard})" if shard else "")
               + f", deselected {len(deselected)}"
               + (f"; {unknown} not in the plan, kept here because this tier is the most "
                  "complete" if unknown else ""))
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter:
        reporter.write_line(message)
