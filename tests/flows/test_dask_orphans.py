"""A flow process killed with SIGKILL while its local Dask cluster starts leaves no worker and no multiprocessing
resource tracker alive: the spawned workers die with it even while they still import the flow's modules, before
Dask's own parent watch runs (r1lib/process.py: die_with_spawning_parent, called by the flows package)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from tests.conftest import ROOT
from tests.lib.export.test_export_crash import _wait_for
from tests.lib.export.test_export_orphans import kill_and_count

pytestmark = pytest.mark.slow  # the command line's own Prefect server, then a Dask cluster (~1 minute on 2 cores)

# Importing flows.finetune takes 16-18 s in a spawned worker at load 7 (5 s or more on an idle machine): a worker
# still alive this long after the kill is one that only Dask's own watch, after that import, would have ended.
GRACE_S = 4


def spawned_workers(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children(recursive=True) if "--multiprocessing-fork" in command_of(p)]


def command_of(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def test_no_dask_worker_outlives_a_killed_flow_process(tmp_path):
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "flows.finetune", "--stop-after", "tokenize", "--set", "runner.kind=dask"]
    command += ["--set", f"runs_dir={tmp_path / 'runs'}"]
    with open(tmp_path / "flow.log", "w") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Killed as soon as both workers exist: they are importing flows.finetune, the window the watch must cover.
        _wait_for(lambda: len(spawned_workers(proc.pid)) == 2, timeout=300, what="the two Dask workers")
        named = {p.pid: command_of(p) for p in psutil.Process(proc.pid).children(recursive=True)}
        started, alive = kill_and_count(proc, grace_s=GRACE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    commands = [named.get(p.pid, "") for p in started]
    assert sum("--multiprocessing-fork" in c for c in commands) == 2, commands
    assert any("resource_tracker" in c for c in commands), commands
    assert any("local_server" in c for c in commands), commands
    assert alive == [], [p.cmdline() for p in alive]
