"""A resumed training reports the whole run: its time, its tokens and its mean loss over every step.

A training killed with SIGKILL after its second checkpoint is resumed; its result is compared with the same training
run without interruption (same data, same order, so the same tokens). A rerun after the final checkpoint publishes
that checkpoint without training: it too reports the run's time and tokens, not zero. The trainings are the session's
(tests/conftest.py), shared with test_faults.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def segment_mean(history: list[dict], after_step: int) -> float:
    """The mean loss of the steps after ``after_step`` only (what a report of the last segment alone would say)."""
    logged = [h for h in history if "loss" in h and h["step"] > after_step]
    spans = [h["step"] - before for h, before in zip(logged, [after_step] + [h["step"] for h in logged])]
    return sum(h["loss"] * n for h, n in zip(logged, spans)) / sum(spans)


def test_a_run_killed_and_resumed_reports_the_whole_runs_time_tokens_and_loss(clean_training, killed_and_resumed):
    clean, resumed = clean_training["result"], killed_and_resumed["resumed"]
    checkpoint, before = killed_and_resumed["checkpoint"], killed_and_resumed["totals_before"]
    assert before["tokens"] > 0 and before["seconds"] > 0 and before["segments"] == 1

    assert resumed["resumed_from"] == str(checkpoint) and resumed["steps"] == clean["steps"] == 12
    assert resumed["segments"] == 2 and clean["segments"] == 1
    # The same 12 steps over the same rows: the same tokens, counted once each.
    assert resumed["tokens"] == clean["tokens"] > 0
    assert resumed["seconds"] > before["seconds"] > 0
    assert resumed["tokens_per_second"] == pytest.approx(resumed["tokens"] / resumed["seconds"], rel=0.01)
    # The mean over all 12 steps, not over the 4 after the checkpoint.
    history = json.loads(Path(resumed["log_history"]).read_text())
    assert max(h["step"] for h in history if "loss" in h) == 12
    assert abs(resumed["train_loss"] - clean["train_loss"]) < 0.05 * clean["train_loss"]
    last_segment = segment_mean(history, 8)
    assert abs(resumed["train_loss"] - clean["train_loss"]) < abs(last_segment - clean["train_loss"])


def test_a_rerun_after_the_final_checkpoint_reports_the_runs_time_and_tokens(rerun_after_final_checkpoint):
    first, again = rerun_after_final_checkpoint["first"], rerun_after_final_checkpoint["again"]
    assert again.resumed_from and again.steps == first.steps == 6
    assert again.tokens == first.tokens > 0 and again.seconds > 0 and again.tokens_per_second > 0
    assert again.train_loss == pytest.approx(first.train_loss)
    assert again.segments == 2
    assert "0.0 s" not in again.summary_lines()[0][1]


def test_the_loss_is_logged_at_every_checkpoint_and_the_last_step(clean_training):
    """logging_steps 5 with checkpoints every 4 of 12 steps (the session's clean training, conftest.py): the loss is
    logged at 4, 5, 8, 10 and 12, so a resumed history covers every step and the run's mean weighs each step once."""
    from r1lib.training.fit import run_mean_loss

    result = clean_training["result"]
    history = json.loads(Path(result["log_history"]).read_text())
    assert [h["step"] for h in history if "loss" in h] == [4, 5, 8, 10, 12]
    assert result["train_loss"] == pytest.approx(run_mean_loss(history))
