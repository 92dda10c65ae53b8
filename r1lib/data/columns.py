"""Column mappings: which field of a row is the prompt, the reasoning, the answer and the system prompt.

A ``ColumnMap`` is given per input in ``data.columns`` (keyed by the input spec as written in ``data.train_paths`` or
``data.test_path``), or recognized without one for the common R1/QA layouts whose field names leave no doubt
(LAYOUTS): medical-o1 / HuatuoGPT-o1 ``Question``/``Complex_CoT``/``Response`` (the chain of thought goes into the
``<think>`` block), MATH ``problem``/``solution``(/``answer``), ``question``/``reasoning``/``answer_text``, BELLE
``question``/``std_answer``, QA ``problem``/``answer`` or ``question``/``answer``. A layout is recognized only when
the row's other fields are metadata (METADATA_KEYS, or not text): a ``context`` or ``passage`` beside a question
would be lost, so such a row asks for a mapping instead. ``suggest_columns`` guesses a ready-to-paste mapping from a
row's keys for the ``unknown_format`` message (never a metadata or id column; exact names first, then the most text).
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Column = Annotated[str, Field(min_length=1, max_length=256)]


class ColumnMap(BaseModel):
    """The fields of one input's rows: ``prompt`` and ``answer`` are required; ``context`` (appended to the prompt
    after a blank line, as Alpaca's ``input``), ``reasoning`` (the <think> block) and ``system`` are optional."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    prompt: Column
    answer: Column
    reasoning: Column | None = None
    system: Column | None = None
    context: Column | None = None

    def fields(self) -> dict[str, str]:
        """Role -> column, the set ones only."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


# (name, mapping), most specific first: the first whose columns the row has all of wins.
LAYOUTS: tuple[tuple[str, ColumnMap], ...] = (
    (
        "medical-o1 / HuatuoGPT-o1 (Question, Complex_CoT, Response)",
        ColumnMap(prompt="Question", reasoning="Complex_CoT", answer="Response"),
    ),
    (
        "reasoning QA (question, reasoning, answer_text)",
        ColumnMap(prompt="question", reasoning="reasoning", answer="answer_text"),
    ),
    (
        "MATH with final answers (problem, solution, answer)",
        ColumnMap(prompt="problem", reasoning="solution", answer="answer"),
    ),
    ("MATH (problem, solution)", ColumnMap(prompt="problem", answer="solution")),
    ("BELLE eval (question, std_answer)", ColumnMap(prompt="question", answer="std_answer")),
    ("QA (problem, answer)", ColumnMap(prompt="problem", answer="answer")),
    ("QA (question, answer)", ColumnMap(prompt="question", answer="answer")),
)
LAYOUT_NAMES = tuple(name for name, _ in LAYOUTS)

# Fields beside a layout's columns that carry no text to train on (labels, ids, levels, sources).
METADATA_KEYS = frozenset(
    {
        "id",
        "idx",
        "index",
        "uid",
        "unique_id",
        "level",
        "type",
        "subject",
        "class",
        "category",
        "categories",
        "source",
        "dataset",
        "split",
        "topic",
        "difficulty",
        "language",
        "lang",
        "tag",
        "tags",
        "url",
        "license",
        "metadata",
        "meta",
        "score",
        "domain",
        "task",
        "task_type",
    }
)


def recognize(row: dict) -> tuple[str, ColumnMap] | None:
    """(layout name, its mapping) when the row is one of LAYOUTS and holds nothing else to train on, else None."""
    for name, columns in LAYOUTS:
        used = set(columns.fields().values())
        if used <= row.keys():
            rest = [k for k in row if k not in used]
            if all(str(k).lower() in METADATA_KEYS or not isinstance(row[k], str) or not row[k].strip() for k in rest):
                return name, columns
            return None  # a matching layout with text beside it: a mapping must say where that text goes
    return None


# Role -> (words a column name holding it contains, names that are it exactly). Whole words of the name (split at
# "_", "-", spaces and camelCase), so "user_id" is not a "user" turn and "subtask_name" does not "ask".
_GUESSES = (
    ("prompt", r"(question|prompt|problem|instruction|query|input|user|human|title|statement)s?",
     {"question", "prompt", "problem", "instruction", "query", "input"}),
    ("answer", r"(answer|response|output|completion|target|reply|assistant|gpt|solution|result|label|final)s?",
     {"answer", "response", "output", "completion"}),
    ("reasoning", r"(cot|reason|reasoning|think|thinking|thought|rationale|chain|explanation|analysis)s?",
     {"reasoning", "cot", "think", "thinking", "thought", "rationale"}),
    ("system", r"system", {"system"}),
    ("context", r"(context|passage|document|background|input)s?", {"context", "passage", "input"}),
)  # fmt: skip
# Name words of a column that identifies or names a row rather than holding its text.
_ID_WORDS = frozenset({"id", "ids", "uid", "uuid", "guid", "idx", "index", "key", "name", "hash", "url", "timestamp"})
# Roles a one-word label ("positive", "geometry") fills only under the role's exact name (Alpaca's short "input").
_LABEL_ROLES = frozenset({"reasoning", "context"})
_WORD_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z][a-z])")


def _words(key: str) -> list[str]:
    return [w.lower() for w in _WORD_SPLIT.split(key) if w]


def _is_metadata(key: str) -> bool:
    """Whether a column names or labels the row (METADATA_KEYS, ``*_id``, ``*_name``, ``*_type``...)."""
    words = _words(key)
    last = words[-1] if words else ""
    return key.lower() in METADATA_KEYS or last in METADATA_KEYS or any(w in _ID_WORDS for w in words)


def _is_label(value: object) -> bool:
    """A short one-word value: a category or label, not a text to train on."""
    return isinstance(value, str) and len(value.strip()) <= 32 and not re.search(r"\s", value.strip())


def suggest_columns(row: dict) -> dict[str, str]:
    """A mapping guessed from the row's keys (the ones holding text, never metadata: METADATA_KEYS, ids, names),
    each role at most once: a column whose name is the role's exact name first, then of those whose name holds one
    of its words the one holding the most text; a leftover answer-like column (``solution`` beside ``answer``) with
    more text than the answer is the reasoning. A role it cannot guess is shown as "<column>" so that the pasted
    mapping fails loudly until it is filled in."""
    texts = [str(k) for k, v in row.items() if isinstance(v, str)] or [str(k) for k in row]
    texts = [k for k in texts if not _is_metadata(k)] or texts

    def size(key: str) -> int:
        return len(row[key]) if isinstance(row.get(key), str) else 0

    guess: dict[str, str] = {}
    answer_like = re.compile(_GUESSES[1][1])
    for role, pattern, exact in _GUESSES:
        found = [k for k in texts if k not in guess.values() and any(re.fullmatch(pattern, w) for w in _words(k))]
        if role == "reasoning" and "answer" in guess:  # question/answer/solution: the solution is the working
            found += [k for k in texts if k not in guess.values() and k not in found and size(k) > size(guess["answer"])
                      and any(answer_like.fullmatch(w) for w in _words(k))]  # fmt: skip
        if role in _LABEL_ROLES:
            found = [k for k in found if k.lower() in exact or not _is_label(row.get(k))]
        found.sort(key=lambda k: (k.lower() not in exact, -size(k)))
        if found:
            guess[role] = found[0]
    rest = iter(k for k in texts if k not in guess.values())  # unnamed columns, in order: prompt, then answer
    for role in ("prompt", "answer"):
        if role not in guess:
            guess[role] = next(rest, "<column>")
    order = ("prompt", "context", "reasoning", "answer", "system")
    return {role: guess[role] for role in order if role in guess}


def mapping_hint(row: dict, file: str | None) -> str:
    """The ``--set`` that maps this row's columns, ready to paste (the file as its input spec names it)."""
    mapping = json.dumps({file or "<input file>": suggest_columns(row)}, ensure_ascii=False)
    return f"--set {shlex.quote(f'data.columns={mapping}')}"  # a quote in a file or column name stays quoted
