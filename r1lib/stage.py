"""What every stage result shares: the run summary reads it, so a new stage needs no edit to the summary.

A stage's result model subclasses ``StageResult`` and says what it shows: ``summary()`` is its part of
``summary.json`` (top-level keys), ``summary_lines()`` its rows of the printed and Markdown summary (label, text),
``card_section()`` its section of the model card (Markdown).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class StageResult(BaseModel):
    """The typed result of one stage, handed on by the flow."""

    def summary(self) -> dict[str, Any]:
        """This stage's keys in ``summary.json``; none by default."""
        return {}

    def summary_lines(self) -> list[tuple[str, str]]:
        """(label, text) rows of the run summary; none by default."""
        return []

    def card_section(self) -> str:
        """This stage's section of the model card (Markdown); none by default."""
        return ""
