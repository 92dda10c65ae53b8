"""A collapse that evaluation already sees stops the run before minutes of export.

A learning rate too high for the data (the tiny preset's 1e-2 on a file of another shape, a few steps) can leave the
model between formats: its R1 format compliance falls to 0 and its general-data perplexity rises hundreds of times.
Exporting it costs minutes and ends in the smoke test's "no closed <think> block" with no hint of why.
``collapse_check`` reads the evaluation's numbers and raises ``ModelCollapsed`` naming the learning rate, the steps
and the numbers that showed it (``evaluate.on_collapse``: stop or warn; ``evaluate.collapse_forgetting_ratio``).
"""

from __future__ import annotations

import logging
from typing import Protocol

from r1lib.config import PipelineConfig
from r1lib.errors import ModelCollapsed

log = logging.getLogger(__name__)


class Generation(Protocol):
    generated: int
    truncated_thinking: int


class Scores(Protocol):
    format_ok: float
    replay_perplexity: float | None
    generation: Generation | None


class EvaluationNumbers(Protocol):
    """What the check reads of the evaluate stage's result (tasks/evaluate.py ``Evaluation``)."""

    base: Scores
    tuned: Scores
    forgetting_ratio: float | None
    forgetting_limit: float | None


def collapse_signs(evaluation: EvaluationNumbers, config: PipelineConfig) -> list[str]:
    """The numbers that say the fine-tuned model collapsed, in words; empty when it did not.

    Forgetting past ``evaluate.collapse_forgetting_ratio`` is a collapse alone. Format compliance falling to 0 is one
    only with forgetting over ``evaluate.max_forgetting_ratio`` too (or, with no replay set, when not every
    generation was merely cut inside its thinking at max_new_tokens): a model that learned to think longer than
    the evaluation's token budget loses its format score without having collapsed."""
    base, tuned = evaluation.base, evaluation.tuned
    ratio, limit, collapse = (
        evaluation.forgetting_ratio,
        evaluation.forgetting_limit,
        config.evaluate.collapse_forgetting_ratio,
    )
    forgetting = (
        f"forgetting {ratio:g}x (general-data perplexity {base.replay_perplexity:g} -> {tuned.replay_perplexity:g}; "
        f"limit evaluate.max_forgetting_ratio={limit})"
        if ratio is not None
        else ""
    )
    signs = []
    if base.format_ok > 0 and tuned.format_ok == 0:
        generation = tuned.generation
        if ratio is not None:
            lost = ratio > (limit or 1.0)
        else:
            lost = generation is None or generation.truncated_thinking < generation.generated
        if lost:
            signs.append(f"R1 format compliance {base.format_ok:.0%} -> 0% (no closed <think> block then an answer)")
            if forgetting:
                signs.append(forgetting)
    if ratio is not None and ratio > collapse and not signs:
        signs.append(f"{forgetting}, past evaluate.collapse_forgetting_ratio={collapse:g}")
    return signs


def collapse_check(evaluation: EvaluationNumbers, config: PipelineConfig, steps: int) -> None:
    """Raise ModelCollapsed (``evaluate.on_collapse=stop``) or log a warning (``warn``) when the evaluation shows a
    collapsed model: the message names train.learning_rate, the steps trained and the numbers that showed it."""
    signs = collapse_signs(evaluation, config)
    if not signs:
        return
    lr = config.train.learning_rate
    message = (
        f"the fine-tuned model collapsed after {steps} steps at train.learning_rate={lr:g}: {'; '.join(signs)}. "
        f"Export and the smoke test would fail on it. Lower train.learning_rate (e.g. {lr / 50:g}) or "
        "train.max_steps, or add replay (augment.replay_ratio); to export anyway set evaluate.on_collapse=warn"
    )
    if config.evaluate.on_collapse == "warn":
        log.warning("%s", message)
        return
    raise ModelCollapsed(message)
