"""A flow run killed with SIGKILL twice, against a real Prefect server, and retried after each kill.

What is killed: the flow-run process (``python -m prefect.engine``, started by the process worker), which runs every
stage and holds the training state: what the OOM killer or a preempted machine does to it. The worker sees its
child die (status -9) and reports the run Crashed within seconds. Nobody is left to report the task runs the process
was running, nor to give back the GPU slot it held: the retry closes them out (r1lib/ops/recovery.py).

1. Killed in the middle of training (after a checkpoint). The retry takes every data stage from the cache and
   resumes training from the checkpoint; training then goes on and the trainer rotates that checkpoint away
   (``save_total_limit``).
2. Killed in the middle of the smoke test, a late stage. The second retry takes every stage that had finished from
   the cache: the data stages, and train, evaluate, merge, convert and quantize, although the checkpoint the cached
   train result resumed from is gone (a finished stage's cache depends on what the next stages read, the adapter).

Killing the worker instead was tried too (by hand, with the Stack of tests/server_stack.py): after a SIGKILL of the
worker alone, the flow-run process exited on its own (a Python SystemExit) and the run was Crashed within 10 s
("Execution was aborted by Python system exit call."), the same end state as here. Killing the worker and the
flow-run process together (a lost machine) left the run Running for the 4 minutes watched: nobody is left to report
it, and Prefect marks such runs Crashed only through flow-run heartbeats plus an automation on missing heartbeats,
not set up here. So the flow-run process is the one this test kills: its death is the case a retry must recover from.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from server_stack import RUN_TIMEOUT, small_config, stage  # the stack fixture: tests/conftest.py

from r1lib.stages import STAGES

pytestmark = [pytest.mark.server, pytest.mark.slow]

STEPS, SAVE_STEPS = 12, 2  # a kill after the first checkpoint still finds ten steps to go
# As _kind names a task run: the declared stage name up to its first dash (resolve-model -> resolve).
EARLIER_STAGES = {s.name.split("-")[0] for s in STAGES if s.group == "data"}
LATE_STAGES = {s.name for s in STAGES if s.group in ("train", "evaluate", "export")}


def _mtimes(run_dir: Path, skip: str = "train") -> dict[str, int]:
    """mtime of every file in the run directory outside ``skip`` (not the ``datasets`` caches that readers add, nor
    the lock a run holds on its folder)."""
    return {
        str(p.relative_to(run_dir)): p.stat().st_mtime_ns
        for p in run_dir.rglob("*")
        if p.is_file()
        and p.relative_to(run_dir).parts[0] != skip
        and not p.name.startswith("cache-")
        and p.relative_to(run_dir) != Path(".lock")
    }


def _kind(task) -> str:
    return stage(task.name).split(" ")[0].split("-")[0]


def _wait_until(condition, run_id: str, what: str, stack) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        with stack.client() as client:
            state = client.read_flow_run(run_id).state
        assert not state.is_final(), f"the run ended before {what}: {state}"
        assert time.monotonic() < deadline, f"no {what}\n{stack.log('worker-local')}"
        time.sleep(0.3)


def _retry(stack, run_id: str):
    """``prefect flow-run retry`` and wait for the run to end; (the run, the task runs of this attempt, seconds)."""
    before = {t.id for t in stack.task_runs(run_id)}
    retry_at, started = time.time(), time.monotonic()
    stack.cli("flow-run", "retry", run_id)
    run = stack.wait(run_id, after=retry_at)
    return run, [t for t in stack.task_runs(run_id) if t.id not in before], time.monotonic() - started


@pytest.fixture(scope="module")
def killed_twice(stack):
    """Kill 1 mid-training, retry 1, kill 2 mid-smoke-test, retry 2; what each step left."""
    config = small_config(stack.tmp, "server-crash", train={"max_steps": STEPS, "save_steps": SAVE_STEPS})
    run_id = stack.run_deployment("r1-finetune/finetune-local", {"config": config})
    run_dir = stack.tmp / "runs" / "server-crash"
    checkpoints = "train/checkpoints/*/checkpoint-*/checkpoint-complete.json"
    out = {"id": run_id, "run_dir": run_dir}

    # Kill 1: the train stage is running and at least one checkpoint is complete on disk.
    def training_with_checkpoint() -> bool:
        if not list(run_dir.glob(checkpoints)):
            return False
        return "train" in {_kind(t) for t in stack.unfinished_task_runs(run_id) if t.state.type.value == "RUNNING"}

    _wait_until(training_with_checkpoint, run_id, "checkpoint while training", stack)
    stack.hold_file.write_text("the smoke test waits while this file exists")  # for kill 2, read only by retry 1
    out["pid1"] = stack.kill_flow_run_process(run_id)
    killed_at = time.monotonic()
    out["checkpoints1"] = sorted(p.parent.name for p in run_dir.glob(checkpoints))
    assert not (run_dir / "train" / "adapter").exists(), "training finished before the kill"
    out["first"] = stack.wait(run_id)
    out["crash1_seconds"] = time.monotonic() - killed_at
    out["first_tasks"] = stack.task_runs(run_id)
    out["left_running1"] = [t.name for t in stack.unfinished_task_runs(run_id)]
    out["slots_after_kill1"] = stack.gpu_slots_in_use()
    out["before1"] = _mtimes(run_dir)  # what the stages before training wrote

    # Retry 1: resumes training, and is killed 2 while the smoke test runs.
    retry_at = time.time()
    stack.cli("flow-run", "retry", run_id)
    _wait_until(stack.held_file.exists, run_id, "smoke test", stack)
    with stack.client() as client:
        out["attempt2"] = client.read_flow_run(run_id)
    out["logs_attempt2"] = stack.logs(run_id)
    out["pid2"] = stack.kill_flow_run_process(run_id)
    stack.hold_file.unlink()
    out["second"] = stack.wait(run_id, after=retry_at)
    first_ids = {t.id for t in out["first_tasks"]}
    out["second_tasks"] = [t for t in stack.task_runs(run_id) if t.id not in first_ids]
    out["left_running2"] = [t.name for t in stack.unfinished_task_runs(run_id)]
    out["summary2"] = json.loads((run_dir / "train" / "result.json").read_text())
    out["before2"] = _mtimes(run_dir, skip="smoke")

    # Retry 2: every stage that had finished comes from the cache.
    out["third"], out["third_tasks"], out["retry2_seconds"] = _retry(stack, run_id)
    out["left_running3"] = [t.name for t in stack.unfinished_task_runs(run_id)]
    out["slots_at_end"] = stack.gpu_slots_in_use()
    print(
        f"kill 1 (pid {out['pid1']}) after {out['checkpoints1']}: Crashed in {out['crash1_seconds']:.1f} s, left "
        f"{out['left_running1']} Running and {out['slots_after_kill1']} GPU slot(s) held; kill 2 (pid {out['pid2']}) "
        f"in the smoke test left {out['left_running2']}; retry 2 took {out['retry2_seconds']:.1f} s: "
        f"{ {stage(t.name): t.state.name for t in out['third_tasks']} }"
    )
    return out


def test_kill_mid_training_crashes_and_the_retry_resumes_from_the_checkpoint(killed_twice):
    first, second = killed_twice["first"], killed_twice["second"]
    assert first.state.type.value == "CRASHED", first.state
    assert "-9" in (first.state.message or ""), first.state.message
    finished = {_kind(t) for t in killed_twice["first_tasks"] if t.state.type.value == "COMPLETED"}
    assert finished >= EARLIER_STAGES, finished
    # The dead attempt's training task run was left Running and its GPU slot held: what the retry must close out.
    assert [n for n in killed_twice["left_running1"] if n.startswith("train")], killed_twice["left_running1"]
    assert killed_twice["slots_after_kill1"] == 1

    assert second.state.type.value == "CRASHED", second.state  # kill 2, in the smoke test
    again = {stage(t.name): t.state.name for t in killed_twice["second_tasks"]}
    earlier = {stage(t.name) for t in killed_twice["first_tasks"] if t.state.type.value == "COMPLETED"}
    assert {name: again.get(name) for name in earlier} == {name: "Cached" for name in earlier}
    # ...and their files were not rewritten; training resumed from a complete checkpoint and reached the last step.
    after = _mtimes(killed_twice["run_dir"])
    assert {path: after.get(path) for path in killed_twice["before1"]} == killed_twice["before1"]
    train = killed_twice["summary2"]
    resumed = train["resumed_from"]
    assert resumed and int(resumed.rsplit("checkpoint-", 1)[1]) >= SAVE_STEPS, resumed
    assert train["steps"] == STEPS
    assert not Path(resumed).exists(), "the checkpoint it resumed from should have been rotated away by now"


def test_a_retry_closes_out_the_dead_attempts_task_runs_and_gpu_slot(killed_twice):
    logs = killed_twice["logs_attempt2"]
    closed = [line for line in logs if "set Crashed" in line and "attempt 1" in line]
    assert [line for line in closed if "task run 'train" in line], logs[:40]
    assert [line for line in logs if "released the GPU slot" in line], logs[:40]
    assert not [line for line in logs if "waiting for a slot" in line], "the retry waited for the dead run's lease"
    # Retry 2 closed out the smoke-test task run that kill 2 left Running; at the end nothing is left Running.
    assert [n for n in killed_twice["left_running2"] if n.startswith("smoke-test")], killed_twice["left_running2"]
    assert killed_twice["left_running3"] == []
    assert killed_twice["slots_at_end"] == 0


def test_second_retry_after_a_kill_in_a_late_stage_takes_every_finished_stage_from_the_cache(killed_twice):
    third = killed_twice["third"]
    assert third.state.type.value == "COMPLETED", third.state
    assert third.run_count >= 3
    finished = {stage(t.name) for t in killed_twice["second_tasks"] if t.state.type.value in ("COMPLETED", "CACHED")}
    assert {n.split(" ")[0].split("-")[0] for n in finished} >= EARLIER_STAGES | LATE_STAGES, finished
    again = {stage(t.name): t.state.name for t in killed_twice["third_tasks"]}
    assert {name: again.get(name) for name in finished} == {name: "Cached" for name in finished}
    assert [state for name, state in again.items() if name.startswith("smoke-test")] == ["Completed"]
    after = _mtimes(killed_twice["run_dir"], skip="smoke")
    changed = sorted(p for p, t in killed_twice["before2"].items() if after.get(p) != t)
    assert changed == [], f"files a cached stage should not have rewritten: {changed}"
