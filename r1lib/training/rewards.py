"""Verifiable rewards for GRPO: each a small function of one completion (the text after the generation prompt, which
opens ``<think>``) and, where it needs one, its reference answer.

  format       1 when the completion holds one closed think block with reasoning and a non-empty answer after it
               (the evaluation's R1 format check), else 0
  correctness  1 when the answer after ``</think>`` equals the reference: exactly, after normalization (case, spaces,
               trailing punctuation), as the same number, or as the same mathematical object (``math-verify``, on
               the ONE final expression: the \\boxed{} content, else the answer text whole; a list, a set, a
               disjunction or words around it get nothing); else 0
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
_BRACE = re.compile(r"\\boxed\s*\{|\{|\}")  # what a one-pass brace scan stops at
# "The answer is ...", "**Answer:** ..." / "答案是 ...": the answer phrase before a final expression, not part of it.
_ANSWER_PHRASE = re.compile(
    r"^(?:\*\*)?(?:so,?\s*)?(?:the\s+)?(?:final\s+)?answer(?:\*\*)?(?:\s+is\s*:?|\s*[:：=])(?:\*\*)?\s*"
    r"|^(?:最终)?答案(?:是|为|[:：])\s*",
    re.I,
)
# Full-width forms (１２, ＋, ／, ，) as their ASCII twins: a CJK keyboard's digits and signs are the same answer.
_HALF_WIDTH = {code: code - 0xFEE0 for code in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"))
# Several candidates in one answer: a list, a disjunction, a range, plus-minus, or plain words (2-letter connectives
# or 3+ letters not after a backslash and not a function name) - a hedge, not one expression.
_SEVERAL = re.compile(
    r"\\lor\b|\\vee\b|\\cup\b|\\pm\b|\\mp\b|±|∨|\.\.\.|…|\\[lcv]?dots\b|\\\{"
    r"|(?<![\\A-Za-z])(?:or|and|is|no|to|of|if|so|be|as|(?!(?:sin|cos|tan|cot|sec|csc|log|ln|exp|sqrt|pi|inf|mod|gcd"
    r"|lcm|max|min|deg)(?![A-Za-z]))[A-Za-z]{3,})(?![A-Za-z])",
    re.I,
)
_OPEN, _CLOSE = "([{", ")]}"
# What math-verify is never asked about (sympy would evaluate it for seconds, up to math-verify's own limit).
_POW = r"(?:\^|\*\*)"
_COSTLY = re.compile(
    "|".join(
        (
            rf"{_POW}\s*(?:\w+|\{{[^{{}}]*\}})\s*{_POW}",  # a power of a power: 2^2^2, 2^{3}^4
            rf"{_POW}\s*\{{[^{{}}]*{_POW}",  # a power inside an exponent: 9^{9^{9}}
            rf"{_POW}\s*\{{?\s*[-+]?\d{{4,}}",  # an exponent of four digits or more: (x+1)^{1000000}
            r"\d{4,}\s*!",  # a factorial of four digits or more: 100000!
            rf"{_POW}\s*\{{?\s*\([^()]*{_POW}",  # a power inside a parenthesized exponent: 9 ^ (9 ^ 9), 2**(3**4)
            r"(?:!|\^|\*\*)[^!]*[)}\]]\s*!",  # a factorial of a factorial or power: (99!)!, (10^{999})!
            r"\\?exp\s*[({][^)}]*\\?exp|e\s*\^\s*\{?\s*\\?exp",  # an exponential of one: \exp(\exp(10))
            r"\\d?binom\s*\{?\s*\d{4,}|\\Gamma\s*[({]\s*\d{4,}",  # \binom{1000000}{500000}, \Gamma(100000)
            r"\\(?:sum|prod|int)\w*\s*[_^].*?\d{4,}",  # a sum, product or integral to 4+ digits: \sum_{k=1}^{10^7}
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


def boxed_contents(text: str) -> list[str]:
    """The contents of the outermost ``\\boxed{...}`` in ``text``, in order (an unclosed one yields nothing). One
    pass with a stack of open braces: linear in the text's length, however many ``\\boxed{`` stay open."""
    found: list[str] = []
    stack: list[int | None] = []  # per open brace: where a \boxed content starts, or None for a plain brace
    open_boxes = 0
    for token in _BRACE.finditer(text):
        if token.group() != "}":
            boxed = token.group() != "{"
            stack.append(token.end() if boxed else None)
            open_boxes += boxed
        elif stack and (start := stack.pop()) is not None:
            open_boxes -= 1
            if not open_boxes:
                found.append(text[start : token.start()].strip())
    return found


def final_expression(answer: str) -> str | None:
    """The one final answer a completion states: the ``\\boxed{}`` content (every box the same, else None: boxing
    two candidates is a hedge), else the answer text whole, less an answer phrase (``The answer is``, ``答案是``),
    trailing sentence punctuation and ``$...$``/``\\(...\\)`` around it. None when nothing is left."""
    if boxes := boxed_contents(answer):
        if len(set(boxes)) > 1:
            return None
        answer = boxes[-1]
    elif "\\boxed" in answer:
        return None  # a \boxed that never closes states no answer
    answer = _ANSWER_PHRASE.sub("", answer.strip()).rstrip(".。 ").strip()  # not "!": 5! is a factorial
    for left, right in _WRAPPERS:
        if len(answer) > len(left) + len(right) and answer.startswith(left) and answer.endswith(right):
            answer = answer[len(left) : -len(right)].strip().rstrip(".。 ").strip()
    return answer or None


def several(expression: str) -> bool:
    """Whether an expression holds several candidates (or words around one): a comma or semicolon outside brackets,
    a disjunction, a set, a range with dots, plus-minus, plain words. A single number, fraction, root, tuple or
    interval is one expression. LaTeX's spaces ``\\,`` and ``\\;`` separate nothing."""
    expression = expression.replace("\\,", " ").replace("\\;", " ")
    depth = 0
    for char in expression:
        depth += (char in _OPEN) - (char in _CLOSE)
        if depth <= 0 and char in ",;，；":
            return True
    return _SEVERAL.search(expression) is not None or any(
        c.isalpha() and not c.isascii() and not "\u0370" <= c <= "\u03ff" for c in expression
    )


def as_number(text: str) -> Decimal | None:
    """The number a short answer states (``42``, ``-3.5``, ``1,000``, ``1\\,000``, ``2e3``, ``$12``, ``50%``, a trailing
    period; inside ``\\boxed{}`` too, when every box holds the same), or None."""
    text = text.strip()
    if boxes := boxed_contents(text):
        if len(set(boxes)) > 1:
            return None
        text = boxes[-1]
    text = text.strip().rstrip(".").removeprefix("$").removesuffix("%").strip()
    text = text.replace("{,}", ",").replace("\\,", ",")  # LaTeX's thousands separators: 1{,}000 and 1\,000
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
    """A reference parsed once for the group of completions scored against it: its final expression as LaTeX (as the
    answer's is), else the reference as written."""
    parse, _ = _math_verify()
    expression = final_expression(reference)
    parsed = parse(f"${expression}$", parsing_timeout=MATH_TIMEOUT_S) if expression else []
    return parsed or parse(reference, parsing_timeout=MATH_TIMEOUT_S)


def _is_several(parsed: list) -> bool:
    """Whether math-verify read several candidates: a set of two or more, or a disjunction."""
    import sympy

    return any(
        (isinstance(p, sympy.FiniteSet) and len(p) > 1) or isinstance(p, (sympy.Or, sympy.Union)) for p in parsed
    )


def math_equal(answer: str, reference: str) -> bool:
    """Whether math-verify finds the two the same mathematical object; False when it cannot parse either (a parse
    failure is not a wrong answer's proof, but it is not a right one's either), when the answer parses to several
    candidates and the reference to one, when ``math_checkable`` says no, and outside the main thread (math-verify's
    time limit needs it: a WARNING says so once). ``answer`` is one expression (``final_expression``)."""
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
        gold, found = _parsed_reference(reference), parse(f"${answer}$", parsing_timeout=MATH_TIMEOUT_S)
        if not gold or not found or (_is_several(found) and not _is_several(gold)):
            return False
        return bool(verify(gold, found, timeout_seconds=MATH_TIMEOUT_S))
    except Exception as exc:  # noqa: BLE001 - its parser raises many kinds on odd input; that answer is just unproven
        log.debug("math-verify could not compare %r with %r: %s", answer[:80], reference[:80], exc)
        return False


def match(answer: str | None, reference: str) -> str | None:
    """How the answer matches the reference (``exact``, ``normalized``, ``numeric``, ``math``), or None, full-width
    forms read as ASCII. Only the whole answer or its one final expression counts: never one candidate picked out of
    several."""
    if answer is None:
        return None
    answer, reference = answer.translate(_HALF_WIDTH).strip(), reference.translate(_HALF_WIDTH).strip()
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
    expression, gold_expression = final_expression(answer), final_expression(reference)
    if expression is None or (several(expression) and not (gold_expression and several(gold_expression))):
        return None  # math-verify would pick one candidate of several (its last number): a hedge is never paid
    return "math" if math_equal(expression, reference) else None


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
