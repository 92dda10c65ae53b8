"""Column mappings: which field of a row is the prompt, the reasoning, the answer and the system prompt.

A ``ColumnMap`` is given per input in ``data.columns`` (keyed by the input spec as written in ``data.train_paths`` or
``data.test_path``), or recognized without one for the common R1/QA layouts whose field names leave no doubt
(LAYOUTS): medical-o1 / HuatuoGPT-o1 ``Question``/``Complex_CoT``/``Response`` (the chain of thought goes into the
``<think>`` block), MATH ``problem``/``solution``(/``answer``), ``question``/``reasoning``/``answer_text``, BELLE
``question``/``std_answer``, QA ``problem``/``answer`` or ``question``/``answer``. A layout is recognized only when
the row's other fields are metadata (METADATA_KEYS, or not text): a ``context`` or ``passage`` beside a question
would be lost, so such a row asks for a mapping instead. ``suggest_columns`` guesses a ready-to-paste mapping from a
row's keys for the ``unknown_format`` message (of several answer-like columns, the one holding the most text).
"""

from __future__ import annotations

import json
import re
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


_GUESSES = (
    ("prompt", r"question|prompt|problem|instruction|query|input|ask|user|human|title"),
    ("reasoning", r"cot|reason|think|thought|rationale|chain|explanation|analysis"),
    ("answer", r"answer|response|output|completion|target|reply|assistant|gpt|solution|result|label"),
    ("system", r"system"),
    ("context", r"context|passage|document|background|input"),
)

_LONGEST = frozenset({"reasoning", "answer"})  # roles whose columns come as a label beside its text


def suggest_columns(row: dict) -> dict[str, str]:
    """A mapping guessed from the row's keys (the ones holding text), each role at most once; a role it cannot
    guess is shown as "<column>" so that the pasted mapping fails loudly until it is filled in."""
    texts = [str(k) for k, v in row.items() if isinstance(v, str)] or [str(k) for k in row]
    guess: dict[str, str] = {}
    for role, pattern in _GUESSES:
        found = [k for k in texts if k not in guess.values() and re.search(pattern, k, re.IGNORECASE)]
        if found and role in _LONGEST:  # answer_letter "A" beside answer_text: the text is the answer to train
            found.sort(key=lambda k: -len(row[k]) if isinstance(row.get(k), str) else 0)
        if found:
            guess[role] = found[0]
    rest = iter(k for k in texts if k not in guess.values())  # unnamed columns, in order: prompt, then answer
    for role in ("prompt", "answer"):
        guess.setdefault(role, next(rest, "<column>"))
    order = ("prompt", "context", "reasoning", "answer", "system")
    return {role: guess[role] for role in order if role in guess}


def mapping_hint(row: dict, file: str | None) -> str:
    """The ``--set`` that maps this row's columns, ready to paste (the file as its input spec names it)."""
    mapping = json.dumps({file or "<input file>": suggest_columns(row)}, ensure_ascii=False)
    return f"--set 'data.columns={mapping}'"
