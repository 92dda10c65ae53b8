"""Operating the flows: the GPU slot and what a killed run leaves behind (on the session's throwaway Prefect API),
the artifacts' text (progress line, smoke-test table, champion-vs-challenger directions), and cache keys that follow
the files a stage reads.

The same against a real server, workers and a SIGKILL: tests/flows/test_server_crash.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from types import SimpleNamespace

import pytest
from prefect import flow, task

from r1lib.ops.gpu_slot import LEASE_LABEL, gpu_slot


@pytest.fixture
def gpu_limit(prefect_harness, monkeypatch):
    """A fresh one-slot limit of its own, named by R1_GPU_LIMIT as a worker's environment would."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    name = f"gpu-test-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    monkeypatch.setenv("R1_GPU_LIMIT", name)
    return name


def _slots(name: str) -> int:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def test_gpu_slot_is_exclusive_and_recorded_on_the_flow_run(gpu_limit):
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    seen = {}

    @flow(name="gpu-slot-holder")
    def holder(hold: float) -> None:
        with gpu_slot():
            with get_client(sync_client=True) as client:
                seen["label"] = client.read_flow_run(flow_run.id).labels.get(LEASE_LABEL)
            seen["slots"] = _slots(gpu_limit)
            time.sleep(hold)
        with get_client(sync_client=True) as client:
            seen["after"] = client.read_flow_run(flow_run.id).labels.get(LEASE_LABEL)

    holder(0)
    assert seen["slots"] == 1 and uuid.UUID(seen["label"]) and seen["after"] == ""
    assert _slots(gpu_limit) == 0

    # Two holders: the second gets the slot only after the first gave it back.
    spans = []

    def hold(seconds: float) -> None:
        with gpu_slot():
            start = time.monotonic()
            time.sleep(seconds)
            spans.append((start, time.monotonic()))

    first = threading.Thread(target=hold, args=(3,))
    first.start()
    time.sleep(1)
    hold(0.1)
    first.join()
    (a_start, a_end), (b_start, _) = sorted(spans)
    assert b_start >= a_end - 0.05, spans


@task(name="orphan-stage")
def _orphan_stage() -> None:
    pass


def test_next_run_closes_out_what_a_killed_run_left_running(gpu_limit):
    """A flow run whose process died: Crashed, one task run still Running, its GPU lease recorded and held. Any
    later run's close-out sets the task run Crashed and gives the slot back."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.states import Crashed, Running

    from r1lib.ops.recovery import close_out_orphans

    @flow(name="r1-finetune")
    def killed() -> None:
        pass

    with get_client(sync_client=True) as client:
        run = client.create_flow_run(killed, state=Running())
        orphan = client.create_task_run(
            _orphan_stage, flow_run_id=run.id, dynamic_key=uuid.uuid4().hex, state=Running()
        )
        lease = client.increment_concurrency_slots_with_lease(
            names=[gpu_limit],
            slots=1,
            mode="concurrency",
            lease_duration=300,
            holder=ConcurrencyLeaseHolder(type="flow_run", id=run.id),
        ).json()["lease_id"]
        client.update_flow_run_labels(run.id, {LEASE_LABEL: lease})
        client.set_flow_run_state(
            run.id, Crashed(message="Flow run infrastructure exited with non-zero status code -9")
        )
    assert _slots(gpu_limit) == 1

    done = close_out_orphans()
    with get_client(sync_client=True) as client:
        closed = client.read_task_run(orphan.id)
        labels = client.read_flow_run(run.id).labels
    assert closed.state.type.value == "CRASHED" and "closed by a later run" in closed.state.message, closed.state
    assert _slots(gpu_limit) == 0 and labels[LEASE_LABEL] == ""
    assert any("released the GPU slot" in line for line in done), done
    assert close_out_orphans() == []  # nothing left to close


def test_progress_line_says_step_loss_rate_and_time_left():
    from tasks.train import progress_line

    line = progress_line(15, 20, {"loss": 1.23456, "learning_rate": 5e-3}, (10, 100.0), 110.0)
    assert line == "step 15/20 · loss 1.2346 · lr 5.00e-03 · 0.5 steps/s · ETA 10 s"
    # A resumed run's first report starts the clock: no rate from steps it did not train.
    assert progress_line(12, 20, {"loss": 2.0}, (12, 50.0), 50.0) == "step 12/20 · loss 2.0000"


def test_smoke_table_is_short_rows_with_percentages(tmp_path):
    from tasks.smoke import SmokeReport, SmokeResult, smoke_table

    gguf = tmp_path / "a-run-with-a-very-long-name-F16.gguf"
    gguf.write_bytes(b"x" * 2**20)
    answer = "The sentence is about animals, and then a very long continuation that runs on and on."
    result = SmokeResult(
        gguf=str(gguf),
        type="F16",
        load_seconds=0.3,
        tokens_per_second=400.0,
        bos_count=1,
        outputs=[answer],
        answers=[answer],
        token_ids=[[1]],
        perplexity=1.031123456,
        perplexity_vs_hf=0.00005,
        quant_loss=None,
    )
    report = SmokeReport(ggufs=[], results=[result], parity_tokens=20, parity_matching=20, hf_tokens=[])
    (row,) = smoke_table(report)
    assert row == {
        "GGUF": "F16",
        "MiB": 1.0,
        "load s": 0.3,
        "tokens/s": 400.0,
        "perplexity": 1.0311,
        "vs HF": "+0.005%",
        "quant loss": "",
        "answer": answer[:39] + "…",
    }


def test_champion_table_says_lower_is_better_for_perplexities_and_forgetting():
    from tasks.promote import comparison_rows

    rows = {r["metric"]: r["better"] for r in comparison_rows({"perplexity": 2.0}, None)}
    assert rows == {
        "perplexity": "lower",
        "accuracy": "higher",
        "format_ok": "higher",
        "replay_perplexity": "lower",
        "forgetting_ratio": "lower",
        "fairness_agreement": "higher",
    }


def test_evaluate_cache_key_follows_the_adapters_content(tmp_path):
    """Evaluate reads the adapter the train stage hands on: a new adapter at the same path is a new evaluation."""
    from r1lib.config import EvalConfig, ModelConfig, TokenizeConfig
    from r1lib.policy import STAGE_CACHE
    from r1lib.stages import Candidate, HeldOut
    from tasks.evaluate import evaluate_task

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(b"first")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    inputs = {
        "candidate": Candidate(model_dir=str(model), adapter_dir=str(adapter)),
        "held_out": HeldOut(records=str(tmp_path / "test.jsonl"), dataset=str(tmp_path / "test")),
        "model_cfg": ModelConfig(),
        "cfg": EvalConfig(),
        "tokenize_cfg": TokenizeConfig(),
        "out_dir": str(tmp_path / "run" / "evaluate"),
    }
    ctx = SimpleNamespace(result_store=None, task=evaluate_task)
    first = STAGE_CACHE.compute_key(ctx, inputs, {})
    weights.write_bytes(b"second")
    assert STAGE_CACHE.compute_key(ctx, inputs, {}) != first
