"""The GRPO rewards (r1lib/training/rewards.py), each on completions as TRL hands them: the text after the
generation prompt (which opens ``<think>``), special tokens stripped."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from r1lib.training import rewards
from r1lib.training.rewards import (
    as_number,
    boxed_contents,
    checkable,
    correctness_reward,
    format_reward,
    match,
    overlong_penalty,
    think_closed,
    trl_rewards,
)

GOOD = "The sentence names two animals.\n</think>\n\nThe sentence is about animals."


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, 1.0),
        (GOOD + "<｜end▁of▁sentence｜>", 1.0),
        ("no think block closes here", 0.0),
        ("reasoning\n</think>\n\n", 0.0),  # no answer after it
        ("\n</think>\n\nThe answer.", 0.0),  # no reasoning
        ("a\n</think>\nb\n</think>\nc", 0.0),  # two closing tags
        ("a\n</think>\n<think>more</think> b", 0.0),
        # outside attack finding 16: a reasoning or answer that shows nothing (invisible, a blank filler, a ".")
        ("x\n</think>\n\n\u200b", 0.0),
        ("\u200b\n</think>\n\n42", 0.0),
        ("\u3164\n</think>\n\n\u3164", 0.0),
        (".\n</think>\n\n.", 0.0),
        ("x\n</think>\n\n42", 1.0),
        ("x\n</think>\n\n答案是 42", 1.0),
    ],
)
def test_format_rewards_one_closed_think_block_with_an_answer_after_it(completion, expected):
    assert format_reward(completion) == expected


def test_think_closed_counts_a_closed_block_even_without_an_answer():
    assert think_closed("reasoning\n</think>\n\n") and not think_closed("still thinking") and think_closed(GOOD)


@pytest.mark.parametrize(
    "answer, reference, how",
    [
        ("The sentence is about animals.", "The sentence is about animals.", "exact"),
        ("the sentence is about Animals", "The sentence is about animals.", "normalized"),
        ("1,000", "1000", "numeric"),
        ("$12.50", "12.5", "numeric"),
        ("\\boxed{42}", "42", "numeric"),
        ("42.", "42", "numeric"),
        ("\\frac{1}{2}", "0.5", "math"),
        ("$\\sqrt{4}$", "2", "math"),
        ("41", "42", None),
        ("1.5", "15", None),  # normalization alone would call them equal
        ("The sentence is about colors.", "The sentence is about animals.", None),
        ("", "42", None),
        (None, "42", None),
        ("\\frac{1}{", "0.5", None),  # math-verify cannot parse it: not right, and no exception either
    ],
)
def test_correctness_matches_exact_normalized_numeric_and_math_equivalent_answers(answer, reference, how):
    assert match(answer, reference) == how


def test_correctness_reads_the_answer_after_the_think_block_only():
    assert correctness_reward("It is 42, I think.\n</think>\n\n42", "42") == 1.0
    assert correctness_reward("The answer is 42", "42") == 0.0  # no closed think block: no answer
    assert correctness_reward("42\n</think>\n\n41", "42") == 0.0  # the reasoning's 42 does not count


def test_numbers_are_read_from_short_answers_only():
    assert as_number("-3.5") == -3.5 and as_number("2e3") == 2000.0 and as_number("50%") == 50.0
    assert as_number("about 42 apples") is None and as_number("1,00") is None and as_number(".") is None


def test_the_overlong_penalty_is_soft_zero_until_the_buffer_then_down_to_minus_one():
    assert overlong_penalty(10, 100, 20) == 0.0 and overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == -0.5 and overlong_penalty(100, 100, 20) == -1.0


def test_a_reference_answer_is_checkable_only_when_short_and_present():
    assert checkable("42", 200) is None
    assert checkable(None, 200).startswith("no_answer")
    assert checkable("  ", 200).startswith("empty_answer")
    assert "train.grpo.max_answer_chars=10" in checkable("a long free-text answer", 10)


def test_trl_reward_functions_are_named_weighted_and_log_the_closed_think_share():
    functions, weights = trl_rewards({"format": 0.5, "correctness": 1.0, "overlong": 0.0}, max_length=8, buffer=4)
    assert [f.__name__ for f in functions] == ["format", "correctness", "overlong"] and weights == [0.5, 1.0, 0.0]
    completions = [GOOD, "thinking without end"]
    logged = {}
    fmt, correct, overlong = functions
    assert fmt(completions=completions, log_metric=logged.__setitem__) == [1.0, 0.0]
    assert logged == {"completions/think_closed_ratio": 0.5}
    assert correct(completions=completions, answer=["The sentence is about animals."] * 2) == [1.0, 0.0]
    assert overlong(completion_ids=[[1] * 3, [1] * 8]) == [0.0, -1.0]


@pytest.mark.parametrize(
    ("answer", "reference"),
    [("1000001", "1000000"), ("12345678901234567", "12345678901234568"), ("1e-9", "0"), ("2e999999", "1e999999")],
)
def test_close_but_different_numbers_are_wrong(answer, reference):
    """Outside attack finding 9: a float tolerance scored these as right; a stated answer is equal or it is not."""
    assert match(answer, reference) is None


# Each took up to math-verify's 5 s time limit (or 1.3 s for the 100k characters), one completion after another.
HOSTILE_ANSWERS = {
    # outside attack finding 4: each took math-verify's whole 2 s limit (the exp tower 0.9 s)
    "parenthesized power tower": "$(9^(9^9))$",
    "spaced power tower": "9 ^ (9 ^ 9)",
    "factorial of a factorial": "$(99!)!$",
    "** power tower": "2**(3**(4**5))",
    "big binomial": "\\boxed{\\binom{1000000}{500000}}",
    "exp tower": "$\\exp(\\exp(\\exp(10)))$",
    "power tower": "^".join(["2"] * 50),
    "nested exponents": "9^{9^{9^{9}}}",
    "huge exponent": "(x+1)^{1000000} - (x+2)^{1000000}",
    "huge factorial": "100000!",
    "100k characters": "x " * 50_000,
    "10k empty fractions": "\\frac{}{}" * 10_000,
}


def test_a_hostile_answer_is_never_handed_to_math_verify(monkeypatch):
    asked, real = [], rewards._math_verify
    monkeypatch.setattr(rewards, "_math_verify", lambda: asked.append(1) or real())
    for answer in HOSTILE_ANSWERS.values():
        assert correctness_reward(f"reasoning\n</think>\n\n{answer}", "4") == 0.0
    assert asked == []
    # what it is for still reaches it: two powers side by side, a small exponent, a fraction
    assert [rewards.math_checkable(a, "1") for a in ("x^2 + y^2", "2^{10}", "\\frac{1}{2}")] == [True] * 3
    assert correctness_reward("r\n</think>\n\n$(x+1)^2$", "$x^2+2x+1$") == 1.0 and asked
    assert correctness_reward("r\n</think>\n\n$2^{10}$", "1024") == 1.0


HALF = "reasoning\n</think>\n\n\\frac{1}{2}"


def test_off_the_main_thread_correctness_falls_back_and_says_so_once_at_warning(caplog):
    rewards._off_main_thread_notice.cache_clear()
    scores = []
    worker = threading.Thread(target=lambda: scores.extend(correctness_reward(HALF, "0.5") for _ in range(3)))
    with caplog.at_level(logging.WARNING, logger=rewards.__name__):
        worker.start()
        worker.join()
    assert scores == [0.0, 0.0, 0.0]  # math-verify needs the main thread: exact, normalized and numeric only
    notices = [r for r in caplog.records if "outside the main thread" in r.getMessage()]
    assert len(notices) == 1 and notices[0].levelno == logging.WARNING
    assert correctness_reward(HALF, "0.5") == 1.0  # in the main thread math-verify proves it


def scored(answer: str, reference: str) -> float:
    return correctness_reward(f"reasoning\n</think>\n\n{answer}", reference)


@pytest.mark.parametrize(
    "answer",
    ["41 or 42", "41, 42", "\\{41, 42\\}", "$41 \\lor 42$", "the answer is not 42", "1, 2, ..., 100",
     "1, 2, 3, ..., 100 (one of these is 42)", "\\boxed{41} or \\boxed{42}", "\\boxed{41, 42}", "42 \\text{ or } 41",
     "\\pm 42", "答案是 41 或 42"],
)  # fmt: skip
def test_a_hedged_answer_is_not_paid(answer):
    """Outside attack finding 2: math-verify took the last number of these and scored them 1.0 against 42."""
    assert scored(answer, "42") == 0.0


@pytest.mark.parametrize(
    ("answer", "reference"), [("-42?", "42"), ("12", "1/2"), ("4-2", "42"), ("3,14", "3.14"), ("5!", "5"), ("3", "-3")]
)
def test_signs_slashes_and_separators_are_part_of_the_answer(answer, reference):
    """Outside attack finding 3: normalization deleted all punctuation and matched these."""
    assert scored(answer, reference) == 0.0


@pytest.mark.parametrize(
    ("answer", "reference"),
    [
        ("42.0", "42"),
        ("$\\frac{1}{2}$", "0.5"),
        ("\\boxed{-3}", "-3"),
        ("答案是 42", "42"),
        ("The answer is $\\sqrt{2}$.", "\\sqrt{2}"),
        ("The final answer is \\boxed{\\dfrac{3}{4}}", "0.75"),
        ("\\(x^2\\)", "x^2"),
        ("\\{1, 2\\}", "\\{1,2\\}"),  # a set is one answer where the reference is a set
        ("(1, 2)", "(1,2)"),  # a comma inside brackets is one object
        ("5!", "120"),
        ("The Sentence is about animals", "The sentence is about animals."),
    ],
)
def test_one_equal_final_answer_is_still_paid(answer, reference):
    assert scored(answer, reference) == 1.0


def test_the_final_expression_is_the_boxed_one_when_every_box_agrees():
    assert boxed_contents("a \\boxed{\\frac{1}{2}} b \\boxed{ {x} }") == ["\\frac{1}{2}", "{x}"]
    assert boxed_contents("\\boxed{\\boxed{42}}") == ["\\boxed{42}"]
    assert rewards.final_expression("\\boxed{42} so \\boxed{42}") == "42"
    assert rewards.final_expression("\\boxed{41} so \\boxed{42}") is None
    assert rewards.final_expression("The answer is: $-3$.") == "-3" and rewards.final_expression("\\boxed{4") is None


def test_many_unclosed_boxes_cost_one_linear_scan():
    """Outside attack finding 5: 16,000 unclosed \\boxed{ took 10 s (quadratic); 50,000 would take minutes."""
    answer = "\\boxed{" * 50_000
    started = time.perf_counter()
    assert boxed_contents(answer) == [] and scored(answer, "42") == 0.0 and as_number(answer) is None
    assert time.perf_counter() - started < 3  # about 0.1 s linear (at load 9 on two cores)
