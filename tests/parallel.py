"""How the suite runs over several pytest-xdist workers (scripts/test: ``-n 2 --dist loadgroup``).

A worker is a pytest process of its own: every session and module fixture runs once per worker that uses it. So the
tests that share a fixture other than a function one are one xdist group, which one worker runs whole, in collection
order: the expensive session fixtures of tests/conftest.py by name (SHARED_FIXTURES), a test module's own module and
session fixtures by module (a module's later test may read what an earlier one left in them:
test_preference_training.py's KTO run starts from its DPO run's adapter). Groups that share a test are joined
(test_tracking_flow.py reads the tiny run and the MLflow server). Then the groups and lone tests are ordered longest
first, so that the last minutes are not one long test alone on one worker (scripts/test keeps this order:
``--no-loadscope-reorder``).

xdist 3.8.0's own ``loadgroup`` cannot see the groups under pytest 9.2: it appends the group to ``item._nodeid``,
which pytest 9.2's node ids no longer read. So the workers write each grouped test's group to a file
(write_groups) and the controller schedules by it (GroupScheduling), through xdist's public scheduler hook.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from xdist.scheduler import LoadScopeScheduling

SHARED_FIXTURES = {
    "tiny_flow_run": "tiny-flow",
    "mlflow_server": "tiny-flow",  # tiny_flow_run asks for it with request.getfixturevalue
    "stack": "server-stack",
    "crashed_run": "server-stack",
    "fault_trainings": "fault-trainings",
    "clean_training": "fault-trainings",
    "killed_and_resumed": "fault-trainings",
    "rerun_after_final_checkpoint": "rerun-training",
}
# Module fixtures cheap to run once per worker: they read tests/stages/test_eval_export.py's on-disk run (built once,
# under a file lock, then reused), and their tests are independent.
PER_WORKER = {"tests/lib/export/test_export_children.py::run", "tests/lib/export/test_export_crash.py::run"}
# Seconds (setup, call and teardown together) of the longest tests on two busy cores, by node-id prefix (a module or
# one test); a prefix's figure is shared among the tests it matches (the longest prefix wins), and any other test
# counts by its marks (item_seconds). From --durations of whole-suite runs: rough is enough.
EXPECTED_SECONDS = {
    "tests/flows/test_server.py": 500,  # with test_server_crash.py: one stack, the crashed run, the nightly, the UI
    "tests/flows/test_server_crash.py": 100,
    "tests/lib/training/test_preference_training.py": 400,
    "tests/flows/test_flow.py": 150,  # the tiny whole flow; its group adds the tracking flow and the MLflow tests
    "tests/lib/training/test_faults.py": 90,
    "tests/flows/test_preference_flow.py": 90,
    "tests/lib/training/test_distributed.py::test_the_whole_flow": 75,
    "tests/lib/training/test_distributed.py::test_ddp_over_two_processes": 70,
    "tests/lib/training/test_distributed.py::test_killed_ddp_training": 70,
    "tests/lib/export/test_export_crash.py": 80,
    "tests/stages/test_layouts_train.py": 60,
    "tests/lib/model/test_scale.py::test_the_rehearsal_runs_every_stage": 45,
    "tests/flows/test_server_lost.py": 40,
    "tests/lib/model/test_remote_code.py::test_no_loader_runs_model_code": 40,
    "tests/lib/training/test_dpo_throughput.py": 35,
    "tests/flows/test_data_runners.py": 35,
    "tests/lib/export/test_export_children.py": 35,
    "tests/flows/test_dask_orphans.py": 25,
    "tests/lib/ops/test_local_server.py::test_kill_9": 25,
}


def fixture_groups(item) -> set[str]:
    """The groups ``item`` belongs to through the fixtures it uses (none: it may run on any worker)."""
    info = getattr(item, "_fixtureinfo", None)
    groups = set()
    for name, defs in info.name2fixturedefs.items() if info else ():
        if name in SHARED_FIXTURES:
            groups.add(SHARED_FIXTURES[name])
        elif defs and defs[-1].scope != "function" and defs[-1].baseid.endswith(".py"):
            if f"{defs[-1].baseid}::{name}" not in PER_WORKER:
                groups.add(defs[-1].baseid)
    return groups


def item_seconds(items: list) -> dict[str, float]:
    """Expected seconds of each test: its EXPECTED_SECONDS prefix's figure shared among the tests it matches, else
    10 for a slow or server test and 0.2 for any other."""
    prefixes = {}
    for item in items:
        matching = [prefix for prefix in EXPECTED_SECONDS if item.nodeid.startswith(prefix)]
        prefixes[item.nodeid] = max(matching, key=len) if matching else None
    shares = {prefix: list(prefixes.values()).count(prefix) for prefix in set(prefixes.values()) - {None}}
    seconds = {}
    for item in items:
        prefix = prefixes[item.nodeid]
        marked = item.get_closest_marker("slow") or item.get_closest_marker("server")
        seconds[item.nodeid] = EXPECTED_SECONDS[prefix] / shares[prefix] if prefix else 10.0 if marked else 0.2
    return seconds


def group_and_order(items: list) -> dict[str, str]:
    """Mark each test that shares a fixture with its (joined) group, reorder ``items`` in place, longest unit first;
    return the group name each SHARED_FIXTURES fixture ended up in."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    groups_of = [fixture_groups(item) for item in items]
    for groups in groups_of:
        for other in sorted(groups)[1:]:
            parent[root(other)] = root(min(groups))
    units: dict[str, list] = {}
    for item, groups in zip(items, groups_of):
        if groups:
            name = root(min(groups))
            item.add_marker(pytest.mark.xdist_group(name))
            units.setdefault(f"group {name}", []).append(item)
        else:
            units[item.nodeid] = [item]
    seconds = item_seconds(items)
    ordered = sorted(units.values(), key=lambda unit: -sum(seconds[item.nodeid] for item in unit))  # stable
    items[:] = [item for unit in ordered for item in unit]
    return {fixture: root(group) for fixture, group in SHARED_FIXTURES.items()}


def groups_file(controller_pid: int) -> Path:
    """Where the workers of the controller process ``controller_pid`` (their parent) leave the groups."""
    return Path(tempfile.gettempdir()) / f"r1-xdist-groups-{controller_pid}.json"


def write_groups(items: list) -> None:
    """On a worker, once collected: {node id: group} of the grouped tests, for GroupScheduling (every worker
    collects the same tests and writes the same file; a temp name then a rename, so a reader never sees half)."""
    groups = {item.nodeid: mark.args[0] for item in items if (mark := item.get_closest_marker("xdist_group"))}
    path = groups_file(os.getppid())
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(groups))
    tmp.replace(path)


class GroupScheduling(LoadScopeScheduling):
    """xdist's loadscope scheduling with tests/parallel.py's groups as the scopes: a grouped test's scope is its group,
    any other test is a scope of its own. Scopes are handed out in collection order (group_and_order's)."""

    def __init__(self, config, log=None):
        super().__init__(config, log)
        self.groups: dict[str, str] | None = None

    def _split_scope(self, nodeid: str) -> str:
        if self.groups is None:  # first called once every worker has collected (and written the file)
            path = groups_file(os.getpid())
            self.groups = json.loads(path.read_text())
            path.unlink()
        return self.groups.get(nodeid, nodeid)
