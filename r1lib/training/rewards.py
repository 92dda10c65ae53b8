"""Verifiable rewards for GRPO: each a small function of one completion (the text after the generation prompt, which
opens ``<think>``) and, where it needs one, its reference answer.

  format       1 when the completion holds one closed think block with reasoning and a non-empty answer after it
               (the evaluation's R1 format check), else 0
  correctness  1 when the answer after ``</think>`` equals the reference: exactly, after normalization (case, spaces,
               punctuation), as the same number, or as the same mathematical object (``math-verify``); else 0
  overlong     0 up to ``max_length - buffer`` tokens, then falling linearly to -1 at ``max_length`` (DAPO's soft
               over-length punishment: a truncated completion is never worth more than a finished one)

``checkable`` says whether a reference answer can be checked at all (a row without one is refused with the reason).
``trl_rewards`` adapts them to TRL's reward-function signature, with the weights of ``train.grpo.rewards``.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

from r1lib.data.chat_template import EOS, THINK_CLOSE, THINK_OPEN, extract_answer
from r1lib.model.generation import format_check, normalize_answer

log = logging.getLogger(__name__)

REWARDS = ("format", "correctness", "overlong")  # the names train.grpo.rewards weighs, in TRL's column order
_NUMBER = re.compile(r"^[-+]?(\d{1,3}(,\d{3})+|\d+)?(\.\d+)?([eE][-+]?\d+)?$")
_BOXED = re.compile(r"\\boxed\{(.*)\}", re.DOTALL)
# What math-verify is never asked about (sympy would evaluate it for seconds, up to math-verify's own limit).
_POW = r"(?:\^|\*\*)"
_COSTLY = re.compile(
    "|".join(
        (
            rf"{_POW}\s*(?:\w+|\{{[^{{}}]*\}})\s*{_POW}",  # a power of a power: 2^2^2, 2^{3}^4
            rf"{_POW}\s*\{{[^{{}}]*{_POW}",  # a power inside an exponent: 9^{9^{9}}
            rf"{_POW}\s*\{{?\s*[-+]?\d{{4,}}",  # an exponent of four digits or more: (x+1)^{1000000}
            r"\d{4,}\s*!",  # a factorial of four digits or more: 100000!
        )
    )
)
MATH_MAX_CHARS = 1000  # an answer longer than this (or than 4x its reference + 64) is compared without math-verify
MATH_TIMEOUT_S = 2  # math-verify's own limit per parse and per comparison (whole seconds: it uses signal.alarm)


def think_closed(completion: str) -> bool:
    """Whether the completion closes its think block (exactly one ``</think>``, no second ``<think>`` after it)."""
    return completion.count(THINK_CLOSE) == 1 and THINK_OPEN not in completion.split(THINK_CLOSE, 1)[1]


def format_reward(completion: str) -> float:
    """1.0 for the R1 format (one closed think block with reasoning, then a non-empty answer), else 0.0."""
    return 1.0 if format_check(completion.split(EOS, 1)[0])[0] else 0.0


def as_number(text: str) -> Decimal | None:
    """The number a short answer states (``42``, ``-3.5``, ``1,000``, ``2e3``, ``$12``, ``50%``, a trailing period;
    inside ``\\boxed{}`` too), or None."""
    text = text.strip()
    if boxed := _BOXED.search(text):
        text = boxed.group(1).strip()
    text = text.strip().rstrip(".").removeprefix("$").removesuffix("%").strip()
    if not text or not _NUMBER.match(text) or not any(c.isdigit() for c in text):
        return None
    try:
        number = Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


@functools.cache
def _math_verify():
    """math-verify's (parse, verify), or None when it is not installed (correctness then stops at numeric)."""
    try:
        from math_verify import parse, verify
    except ImportError:
        log.warning("math-verify is not installed: GRPO correctness checks exact and numeric answers only")
        return None
    # sympy's first comparison sets itself up (2.4 s at load 19, then 14-68 ms): once, with a time limit of its own.
    # Called from the main thread only (math_equal), where math-verify's limit works.
    verify(parse("$x^2+2x+1$", parsing_timeout=60), parse("$(x+1)^2$", parsing_timeout=60), timeout_seconds=60)
    return parse, verify


@functools.cache
def _off_main_thread_notice() -> None:
    log.warning(
        "GRPO correctness is checked outside the main thread: math-verify bounds its time with signal.alarm, which "
        "only the main thread has, so answers are matched exactly, normalized and as numbers only (an equal object "
        "written differently, \\frac{1}{2} for 0.5, scores 0). Call the rewards from the main thread to use it."
    )


def math_checkable(answer: str, reference: str) -> bool:
    """Whether math-verify may be asked about ``answer``: short enough (``MATH_MAX_CHARS``, and at most 4x the
    reference + 64 characters: no rewriting of a short answer is that long) and holding nothing sympy would spend
    seconds evaluating (``_COSTLY``). A hostile completion then costs one regex scan, not math-verify's time limit."""
    if len(answer) > min(MATH_MAX_CHARS, 4 * len(reference) + 64):
        return False
    return _COSTLY.search(answer) is None


@functools.lru_cache(maxsize=1024)
def _parsed_reference(reference: str) -> list:
    """A reference parsed once for the group of completions scored against it."""
    parse, _ = _math_verify()
    return parse(reference, parsing_timeout=MATH_TIMEOUT_S)


def math_equal(answer: str, reference: str) -> bool:
    """Whether math-verify finds the two the same mathematical object; False when it cannot parse either (a parse
    failure is not a wrong answer's proof, but it is not a right one's either), when ``math_checkable`` says no, and
    outside the main thread (math-verify's time limit needs it: a WARNING says so once)."""
    if not math_checkable(answer, reference):
        return False
    if threading.current_thread() is not threading.main_thread():
        _off_main_thread_notice()
        return False
    tools = _math_verify()
    if tools is None:
        return False
    parse, verify = tools
    try:
        gold, found = _parsed_reference(reference), parse(answer, parsing_timeout=MATH_TIMEOUT_S)
        return bool(gold) and bool(found) and bool(verify(gold, found, timeout_seconds=MATH_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - its parser raises many kinds on odd input; that answer is just unproven
        log.debug("math-verify could not compare %r with %r: %s", answer[:80], reference[:80], exc)
        return False


def match(answer: str | None, reference: str) -> str | None:
    """How the answer matches the reference (``exact``, ``normalized``, ``numeric``, ``math``), or None."""
    if answer is None:
        return None
    answer, reference = answer.strip(), reference.strip()
    if not answer:
        return None
    if answer == reference:
        return "exact"
    found, gold = as_number(answer), as_number(reference)
    if found is not None and gold is not None:  # before normalization, which drops the decimal point (1.5 vs 15)
        # exact decimal equality: 1.50 is 1.5 and 2e3 is 2000, but 1000001 is not 1000000 (a float tolerance said so)
        return "numeric" if found == gold else None
    if normalize_answer(answer) == normalize_answer(reference):
        return "normalized"
    return "math" if math_equal(answer, reference) else None


def correctness_reward(completion: str, reference: str) -> float:
    """1.0 when the answer after ``</think>`` matches the reference (``match``), else 0.0 (no closed think block:
    no answer)."""
    return 1.0 if match(extract_answer(completion.split(EOS, 1)[0]), reference) else 0.0


def overlong_penalty(length: int, max_length: int, buffer: int) -> float:
    """0.0 up to ``max_length - buffer`` tokens, then linearly down to -1.0 at ``max_length`` (and below, past it)."""
    start = max_length - buffer
    return 0.0 if length <= start else -(length - start) / max(buffer, 1)


def checkable(reference: str | None, max_chars: int) -> str | None:
    """Why a reference answer cannot be checked (None when it can): missing, empty, or longer than ``max_chars``
    (free text, where no equality rule says whether an answer is right)."""
    if reference is None:
        return "no_answer: the row has no </think> followed by an answer"
    if not reference.strip():
        return "empty_answer: nothing follows </think>"
    if len(reference.strip()) > max_chars:
        return f"free_text_answer: {len(reference.strip())} characters > train.grpo.max_answer_chars={max_chars}"
    return None


def trl_rewards(weights: dict[str, float], max_length: int, buffer: int) -> tuple[list[Callable], list[float]]:
    """The rewards as TRL reward functions (named as in ``REWARDS``: TRL logs ``rewards/<name>/mean``) and their
    weights. Rows carry the reference in an ``answer`` column. The format reward also logs the share of completions
    that close their think block (``completions/think_closed_ratio``)."""

    def format(completions, log_metric=None, **_):  # noqa: A001 - TRL names the logged column after the function
        if log_metric is not None and completions:
            log_metric("completions/think_closed_ratio", sum(map(think_closed, completions)) / len(completions))
        return [format_reward(c) for c in completions]

    def correctness(completions, answer, **_):
        return [correctness_reward(c, a) for c, a in zip(completions, answer)]

    def overlong(completion_ids, **_):
        return [overlong_penalty(len(ids), max_length, buffer) for ids in completion_ids]

    functions = {"format": format, "correctness": correctness, "overlong": overlong}
    return [functions[name] for name in REWARDS], [float(weights[name]) for name in REWARDS]
