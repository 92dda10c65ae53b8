"""A flow run killed with SIGKILL in the middle of training, against a real Prefect server, then retried.

What is killed: the flow-run process (``python -m prefect.engine``, started by the process worker), which runs every
stage and holds the training state: what the OOM killer or a preempted machine does to it. The worker sees its
child die (status -9) and reports the run Crashed within seconds; ``prefect flow-run retry`` then takes every
finished stage from the cache and training resumes from its last complete checkpoint. The dead run's GPU slot is
freed when its lease runs out (r1lib/policy.py: GPU_LEASE_SECONDS), so the retry waits for that first.

Killing the worker instead was tried too (by hand, with the Stack of tests/server_stack.py): after a SIGKILL of the
worker alone, the flow-run process exited on its own (a Python SystemExit) and the run was Crashed within 10 s
("Execution was aborted by Python system exit call."), the same end state as here. Killing the worker and the
flow-run process together (a lost machine) left the run Running for the 4 minutes watched: nobody is left to report
it, and Prefect marks such runs Crashed only through flow-run heartbeats plus an automation on missing heartbeats,
not set up here. So the flow-run process is the one this test kills: its death is the case a retry must recover from.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from server_stack import RUN_TIMEOUT, small_config, stack, stage  # noqa: F401 (stack: the module's server fixture)

pytestmark = [pytest.mark.server, pytest.mark.slow]

STEPS, SAVE_STEPS = 12, 2  # a kill after the first checkpoint still finds ten steps to go


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _mtimes(run_dir: Path) -> dict[str, int]:
    """mtime of every file in the run directory outside train/ (not the ``datasets`` caches that readers add)."""
    return {
        str(p.relative_to(run_dir)): p.stat().st_mtime_ns
        for p in run_dir.rglob("*")
        if p.is_file() and p.relative_to(run_dir).parts[0] != "train" and not p.name.startswith("cache-")
    }


def test_flow_run_killed_mid_training_crashes_and_its_retry_resumes_from_the_checkpoint(stack):
    config = small_config(stack.tmp, "server-crash", train={"max_steps": STEPS, "save_steps": SAVE_STEPS})
    run_id = stack.run_deployment("r1-finetune/finetune-local", {"config": config})
    run_dir = stack.tmp / "runs" / "server-crash"

    # The train stage is running and at least one checkpoint is complete on disk.
    deadline = time.monotonic() + RUN_TIMEOUT
    while True:
        if list(run_dir.glob("train/checkpoints/*/checkpoint-*/checkpoint-complete.json")):
            running = {stage(t.name).split(" ")[0] for t in stack.task_runs(run_id) if t.state.type.value == "RUNNING"}
            if "train" in running:
                break
        with stack.client() as client:
            state = client.read_flow_run(run_id).state
        assert not state.is_final(), f"the run ended before it could be killed: {state}"
        assert time.monotonic() < deadline, f"no checkpoint yet\n{stack.log('worker-local')}"
        time.sleep(0.3)
    pids = stack.flow_run_pids(run_id)
    (engine,) = [pid for pid in pids if _parent(pid) not in pids]  # the flow-run process, not a child of it
    os.kill(engine, signal.SIGKILL)
    killed_at = time.monotonic()
    checkpoints = sorted(run_dir.glob("train/checkpoints/*/checkpoint-*/checkpoint-complete.json"))
    assert not (run_dir / "train" / "adapter").exists(), "training finished before the kill"

    first = stack.wait(run_id)
    first_tasks = stack.task_runs(run_id)
    print(
        f"killed pid {engine} after checkpoint(s) {[p.parent.name for p in checkpoints]}; flow run "
        f"{first.state.name} after {time.monotonic() - killed_at:.1f} s: {first.state.message}; task runs "
        f"{ {stage(t.name): t.state.name for t in first_tasks} }"
    )
    assert first.state.type.value == "CRASHED", first.state
    assert "-9" in (first.state.message or ""), first.state.message
    finished = {stage(t.name) for t in first_tasks if t.state.type.value == "COMPLETED"}
    assert {name.split(" ")[0].split("-")[0] for name in finished} >= {
        "validate",
        "dedup",
        "augment",
        "debias",
        "resolve",
        "tokenize",
    }, finished
    before = _mtimes(run_dir)  # what the stages before training wrote

    retry_at = time.time()
    started = time.monotonic()
    stack.cli("flow-run", "retry", run_id)
    second = stack.wait(run_id, after=retry_at)
    assert second.state.type.value == "COMPLETED", second.state
    first_ids = {t.id for t in first_tasks}
    again = [t for t in stack.task_runs(run_id) if t.id not in first_ids]
    names = {stage(t.name): t.state.name for t in again}
    (train_run,) = [t for t in again if stage(t.name).startswith("train")]
    print(
        f"retry took {time.monotonic() - started:.1f} s, training started "
        f"{train_run.start_time.timestamp() - retry_at:.1f} s after the retry; task runs of the retry: {names}"
    )
    # Nothing finished before training ran again: each came from the cache, and its files were not rewritten.
    assert {name: names.get(name) for name in finished} == {name: "Cached" for name in finished}
    after = _mtimes(run_dir)
    assert {path: after.get(path) for path in before} == before
    # Training resumed from a complete checkpoint and ended at the same step count.
    assert names[stage(train_run.name)] == "Completed"
    summary = json.loads((run_dir / "summary.json").read_text())
    resumed = summary["train"]["resumed_from"]
    assert resumed and int(resumed.rsplit("checkpoint-", 1)[1]) >= SAVE_STEPS, resumed
    assert summary["train"]["steps"] == STEPS
