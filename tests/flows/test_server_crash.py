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
   Its smoke test fails (injected; test_server.py checks that a failed late stage is retried), and the third retry
   completes the run from the cache.

The run is the session's (tests/conftest.py: crashed_run), shared with test_server.py.

Killing the worker instead was tried too (by hand, with the Stack of tests/server_stack.py): after a SIGKILL of the
worker alone, the flow-run process exited on its own (a Python SystemExit) and the run was Crashed within 10 s
("Execution was aborted by Python system exit call."), the same end state as here. Killing the worker and the
flow-run process together (a lost machine) left the run Running for the 4 minutes watched: nobody is left to report
it, and Prefect marks such runs Crashed only through flow-run heartbeats plus an automation on missing heartbeats,
not set up here. So the flow-run process is the one this test kills: its death is the case a retry must recover from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from server_stack import CRASH_SAVE_STEPS, CRASH_STEPS, kind, mtimes, stage

from r1lib.stages import STAGES

pytestmark = [pytest.mark.server, pytest.mark.slow]

EARLIER_STAGES = {s.name.split("-")[0] for s in STAGES if s.group == "data"}
LATE_STAGES = {s.name for s in STAGES if s.group in ("train", "evaluate", "export")}


@pytest.fixture(scope="module")
def killed_twice(crashed_run):
    """The session's crashed run (tests/conftest.py: crashed_run; tests/server_stack.py: crash_fail_and_retry): kill 1
    mid-training, retry 1, kill 2 mid-smoke-test, retry 2 (the smoke test failing, injected: test_server.py checks
    that part), retry 3."""
    return crashed_run


def test_kill_mid_training_crashes_and_the_retry_resumes_from_the_checkpoint(killed_twice):
    first, second = killed_twice["first"], killed_twice["second"]
    assert first.state.type.value == "CRASHED", first.state
    assert "-9" in (first.state.message or ""), first.state.message
    finished = {kind(t) for t in killed_twice["first_tasks"] if t.state.type.value == "COMPLETED"}
    assert finished >= EARLIER_STAGES, finished
    # The dead attempt's training task run was left Running and its GPU slot held: what the retry must close out.
    assert [n for n in killed_twice["left_running1"] if n.startswith("train")], killed_twice["left_running1"]
    assert killed_twice["slots_after_kill1"] == 1

    assert second.state.type.value == "CRASHED", second.state  # kill 2, in the smoke test
    again = {stage(t.name): t.state.name for t in killed_twice["second_tasks"]}
    earlier = {stage(t.name) for t in killed_twice["first_tasks"] if t.state.type.value == "COMPLETED"}
    assert {name: again.get(name) for name in earlier} == {name: "Cached" for name in earlier}
    # ...and their files were not rewritten; training resumed from a complete checkpoint and reached the last step.
    after = mtimes(killed_twice["run_dir"])
    assert {path: after.get(path) for path in killed_twice["before1"]} == killed_twice["before1"]
    train = killed_twice["summary2"]
    resumed = train["resumed_from"]
    assert resumed and int(resumed.rsplit("checkpoint-", 1)[1]) >= CRASH_SAVE_STEPS, resumed
    assert train["steps"] == CRASH_STEPS
    assert not Path(resumed).exists(), "the checkpoint it resumed from should have been rotated away by now"


def test_a_retry_closes_out_the_dead_attempts_task_runs_and_gpu_slot(killed_twice):
    logs = killed_twice["logs_attempt2"]
    closed = [line for line in logs if "set Crashed" in line and "attempt 1" in line]
    assert [line for line in closed if "task run 'train" in line], logs[:40]
    assert [line for line in logs if "released the GPU slot" in line], logs[:40]
    assert not [line for line in logs if "waiting for a slot" in line], "the retry waited for the dead run's lease"
    # Retry 2 closed out the smoke-test task run that kill 2 left Running; after it nothing is left Running.
    assert [n for n in killed_twice["left_running2"] if n.startswith("smoke-test")], killed_twice["left_running2"]
    assert killed_twice["left_running3"] == []
    assert killed_twice["slots_at_end"] == 0


def test_second_retry_after_a_kill_in_a_late_stage_takes_every_finished_stage_from_the_cache(killed_twice):
    # Retry 2 ran its smoke test into the injected fault (test_server.py: the failed late stage); retry 3 completed.
    third, fourth = killed_twice["third"], killed_twice["fourth"]
    assert third.state.type.value == "FAILED", third.state
    assert fourth.state.type.value == "COMPLETED", fourth.state
    assert third.run_count >= 3 and fourth.run_count >= 4
    finished = {stage(t.name) for t in killed_twice["second_tasks"] if t.state.type.value in ("COMPLETED", "CACHED")}
    assert {n.split(" ")[0].split("-")[0] for n in finished} >= EARLIER_STAGES | LATE_STAGES, finished
    again = {stage(t.name): t.state.name for t in killed_twice["third_tasks"]}
    assert {name: again.get(name) for name in finished} == {name: "Cached" for name in finished}
    assert [state for name, state in again.items() if name.startswith("smoke-test")] == ["Failed"]
    last = {stage(t.name): t.state.name for t in killed_twice["fourth_tasks"]}
    assert [state for name, state in last.items() if name.startswith("smoke-test")] == ["Completed"]
    after = mtimes(killed_twice["run_dir"], skip="smoke")
    changed = sorted(p for p, t in killed_twice["before2"].items() if after.get(p) != t)
    assert changed == [], f"files a cached stage should not have rewritten: {changed}"
