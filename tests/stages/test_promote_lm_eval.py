"""The nightly can gate a promotion on an lm-eval task score (think block stripped): ``PromotionPolicy.metric =
lm_eval/<task>/<metric>,<filter>`` compares the challenger with the champion, or with the base model at the first
night, and the comparison table shows the task."""

from __future__ import annotations

import pytest

SCORE = "lm_eval/r1_sample_topic/exact_match,none"


def test_a_promotion_gates_on_an_lm_eval_task_score():
    from tasks.promote import PromotionPolicy, comparison_rows, decide

    policy = PromotionPolicy(metric=SCORE)
    challenger = {"accuracy": 0.9, SCORE: 0.5, f"base_{SCORE}": 0.25, "forgetting_ratio": 1.0}
    assert decide(challenger, None, policy)[0]  # beats the base model's 0.25
    promote, reason = decide(challenger, {"accuracy": 0.1, SCORE: 0.75, "forgetting_ratio": 1.0}, policy)
    assert not promote and f"{SCORE} 0.5 vs champion 0.75" in reason  # better accuracy does not matter here
    row = next(r for r in comparison_rows(challenger, None) if r["metric"] == SCORE)
    assert (row["challenger"], row["base model"], row["better"]) == (0.5, 0.25, "higher")


def test_a_gate_metric_must_name_an_lm_eval_score():
    from pydantic import ValidationError

    from tasks.promote import PromotionPolicy

    with pytest.raises(ValidationError):
        PromotionPolicy(metric="lm_eval/r1_sample_topic")  # no metric,filter
    with pytest.raises(ValidationError):
        PromotionPolicy(metric="bleu")
