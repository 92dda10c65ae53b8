"""A collapse that evaluation already sees stops the run before the smoke test and the card, naming the learning rate,
the steps and the numbers that showed it (the issue's run: format compliance 78% -> 0%, forgetting 470x at lr 0.01, 5
steps); a model that only thinks past the evaluation's token budget, or forgets within its limit, goes on."""

import logging

import pytest

from r1lib.errors import ModelCollapsed
from r1lib.model.generation import GenerationStats
from r1lib.presets import preset
from r1lib.training.collapse import collapse_check, collapse_signs
from tasks.evaluate import Evaluation, ModelScores

TINY = preset("tiny")


def scores(format_ok: float, replay: float | None, truncated_thinking: int = 0, repetition: float = 0.1) -> ModelScores:
    generation = GenerationStats(
        prompts=60, generated=60, new_tokens=2880, seconds=3.0, tokens_per_second=960.0, truncated=truncated_thinking,
        truncated_thinking=truncated_thinking, batch_size=30, stopped_by_time_limit=False,
    )  # fmt: skip
    return ModelScores(
        perplexity=2.0, replay_perplexity=replay, accuracy=0.0, accuracy_normalized=0.0, format_ok=format_ok,
        repetition_rate=repetition, generated=60, stopped_by_time_limit=False, generation=generation,
    )  # fmt: skip


def evaluation(base: ModelScores, tuned: ModelScores) -> Evaluation:
    ratio = round(tuned.replay_perplexity / base.replay_perplexity, 4) if base.replay_perplexity else None
    return Evaluation(
        base=base, tuned=tuned, forgetting_ratio=ratio, forgetting_limit=1.5, forgetting_exceeded=(ratio or 0) > 1.5,
        samples="s.jsonl",
    )  # fmt: skip


def test_the_issues_collapse_stops_the_run_naming_learning_rate_steps_and_forgetting():
    collapsed = evaluation(scores(0.78, 1.47), scores(0.0, 690.9))
    with pytest.raises(ModelCollapsed) as info:
        collapse_check(collapsed, TINY, steps=5)
    message = str(info.value)
    assert "after 5 steps at train.learning_rate=0.01" in message
    assert "R1 format compliance 78% -> 0%" in message and "forgetting 470x" in message
    assert "general-data perplexity 1.47 -> 690.9" in message and "evaluate.max_forgetting_ratio=1.5" in message
    assert "train.learning_rate (e.g. 0.0002)" in message and "evaluate.on_collapse=warn" in message


def test_forgetting_far_past_its_limit_is_a_collapse_alone_and_warn_lets_the_run_go_on(caplog):
    forgot = evaluation(scores(0.78, 1.5), scores(0.7, 45.0))
    assert collapse_signs(forgot, TINY) == [
        "forgetting 30x (general-data perplexity 1.5 -> 45; limit evaluate.max_forgetting_ratio=1.5), past "
        "evaluate.collapse_forgetting_ratio=20"
    ]
    warn = TINY.model_copy(update={"evaluate": TINY.evaluate.model_copy(update={"on_collapse": "warn"})})
    with caplog.at_level(logging.WARNING, logger="r1lib.training.collapse"):
        collapse_check(forgot, warn, steps=90)
    assert "collapsed after 90 steps" in caplog.text


def test_format_nearly_gone_with_degenerate_repetition_is_a_collapse_within_the_forgetting_limit():
    # The numbers of a 5-step run at lr 0.01 on the GSM8K chat file, scored on its own held-out rows: forgetting 1.46x.
    seen = evaluation(scores(0.35, 1.4671, repetition=0.0335), scores(0.02, 2.1444, 31, repetition=0.6064))
    with pytest.raises(ModelCollapsed) as info:
        collapse_check(seen, TINY, steps=5)
    message = str(info.value)
    assert "R1 format compliance 35% -> 2%" in message and "repeated 3-gram rate 0.0335 -> 0.6064" in message


@pytest.mark.parametrize(
    "base, tuned",
    [
        (scores(0.78, 1.47), scores(1.0, 1.62)),  # the demo: 1.1x, format 78% -> 100%
        (scores(0.78, 1.47), scores(0.0, 1.60)),  # format lost within the forgetting limit: thinking past the budget
        (scores(0.3, None), scores(0.0, None, truncated_thinking=60)),  # no replay set; every answer cut in thinking
        (scores(0.0, 1.47), scores(0.0, 2.5)),  # never in format: nothing lost
    ],
)
def test_a_model_that_did_not_collapse_goes_on(base, tuned):
    collapse_check(evaluation(base, tuned), TINY, steps=90)


def test_without_a_replay_set_format_lost_on_finished_answers_is_a_collapse():
    with pytest.raises(ModelCollapsed, match="R1 format compliance 30% -> 0%"):
        collapse_check(evaluation(scores(0.3, None), scores(0.0, None, truncated_thinking=10)), TINY, steps=5)


def test_a_diverged_model_whose_numbers_are_nan_is_a_collapse():
    """A NaN loss gives NaN forgetting: every comparison with it is false, so it must be a sign by itself."""
    diverged = evaluation(scores(0.9, 1.5), scores(0.0, float("nan")))
    signs = collapse_signs(diverged, TINY)
    assert len(signs) == 1 and "not finite" in signs[0] and "the weights diverged" in signs[0]
    with pytest.raises(ModelCollapsed):
        collapse_check(diverged, TINY, steps=3)
