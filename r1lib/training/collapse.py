"""A collapse that evaluation already sees stops the run before the smoke test and the card (the export branch,
which runs beside evaluation, is left to end).

A learning rate too high for the data (the tiny preset's 1e-2 on a file of another shape, a few steps) can leave the
model between formats: its R1 format compliance falls to 0 and its general-data perplexity rises hundreds of times.
Shipping it costs minutes and ends in the smoke test's "no closed <think> block" with no hint of why.
``collapse_check`` reads the evaluation's numbers and raises ``ModelCollapsed`` naming the learning rate, the steps
and the numbers that showed it (``evaluate.on_collapse``: stop or warn; ``evaluate.collapse_forgetting_ratio``).
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

from r1lib.config import PipelineConfig
from r1lib.errors import ModelCollapsed

log = logging.getLogger(__name__)
# A share of repeated 3-grams in the generations that fluent text does not reach ("The The The ..."): the tiny demo's
# models stay under 0.1, the collapsed 5-step GSM8K run reached 0.61.
DEGENERATE_REPETITION = 0.5


class Generation(Protocol):
    generated: int
    truncated_thinking: int


class Scores(Protocol):
    format_ok: float
    repetition_rate: float
    replay_perplexity: float | None
    generation: Generation | None


class EvaluationNumbers(Protocol):
    """What the check reads of the evaluate stage's result (tasks/evaluate.py ``Evaluation``)."""

    base: Scores
    tuned: Scores
    forgetting_ratio: float | None
    forgetting_limit: float | None


def _g(number: float | None) -> str:
    return "none" if number is None else f"{number:g}"


def collapse_signs(evaluation: EvaluationNumbers, config: PipelineConfig) -> list[str]:
    """The numbers that say the fine-tuned model collapsed, in words; empty when it did not.

    Forgetting past ``evaluate.collapse_forgetting_ratio`` is a collapse alone. R1 format compliance falling to
    (nearly) nothing, a tenth of the base model's or less, is one when something else confirms it: forgetting over
    ``evaluate.max_forgetting_ratio``, generations that repeat themselves (``DEGENERATE_REPETITION``), or, with no
    replay set, answers not merely cut inside their thinking at max_new_tokens. A model that learned to think longer
    than the evaluation's token budget loses its format score without any of those."""
    base, tuned = evaluation.base, evaluation.tuned
    ratio, limit = evaluation.forgetting_ratio, evaluation.forgetting_limit
    numbers = (ratio, tuned.replay_perplexity, tuned.format_ok, tuned.repetition_rate)
    if any(x is not None and not math.isfinite(x) for x in numbers):  # a NaN loss: no comparison below can see it
        return [
            f"numbers that are not finite (forgetting {ratio}, general-data perplexity {tuned.replay_perplexity}, "
            f"R1 format compliance {tuned.format_ok}, repetition {tuned.repetition_rate}): the weights diverged"
        ]
    collapse = config.evaluate.collapse_forgetting_ratio
    forgetting = (
        f"forgetting {ratio:g}x (general-data perplexity {_g(base.replay_perplexity)} -> "
        f"{_g(tuned.replay_perplexity)}; "
        f"limit evaluate.max_forgetting_ratio={limit})"
        if ratio is not None
        else ""
    )
    signs = []
    if base.format_ok > 0 and tuned.format_ok <= base.format_ok / 10:
        confirmed = []
        if ratio is not None and ratio > (limit or 1.0):
            confirmed.append(forgetting)
        if tuned.repetition_rate >= DEGENERATE_REPETITION > base.repetition_rate:
            confirmed.append(
                f"repeated 3-gram rate {base.repetition_rate:g} -> {tuned.repetition_rate:g} (degenerate repetition)"
            )
        generation = tuned.generation
        if ratio is None and (generation is None or generation.truncated_thinking < generation.generated):
            confirmed.append("answers that end without a closed <think> block")
        if confirmed:
            signs += [
                f"R1 format compliance {base.format_ok:.0%} -> {tuned.format_ok:.0%} (a closed <think> block, then an "
                "answer)",
                *confirmed,
            ]
    if ratio is not None and ratio > collapse and forgetting not in signs:
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
        "Smoke-testing and shipping it would spend minutes on a model that lost its format. Lower train.learning_rate "
        f"(e.g. {lr / 50:g}) or train.max_steps, or add replay (augment.replay_ratio); to export anyway set "
        "evaluate.on_collapse=warn"
    )
    if config.evaluate.on_collapse == "warn":
        log.warning("%s", message)
        return
    raise ModelCollapsed(message)
