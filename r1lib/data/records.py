"""The one internal record every input format is normalized into: its shape, its declared schema, its id.

A record is a plain dict (cheap to stream as JSON lines)::

    {"id": "<sha256 of the content>",
     "system": "" ,
     "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": <answer only>}, ...],
     "reasoning": "<thinking of the last assistant turn>" or None,
     "source": {"file": ..., "line": ...},
     "origin": "original" | "prompt_template:<n>" | "replay" | "counterfactual" ...}

row_formats.normalize turns a row of any recognized format into a record's body; make_record adds its id (a hash of
its content), source and origin, and check_schema holds every accepted record to the declared schema.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class RecordError(ValueError):
    """A row that cannot become a record; ``reason`` is a stable code, ``field`` the offending field."""

    def __init__(self, reason: str, field: str | None, message: str):
        super().__init__(message)
        self.reason = reason
        self.field = field


# --- The declared schema of a record (pydantic); validate.py checks every accepted record against it. -----------


class MessageSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


class SourceSchema(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    file: str
    line: int = Field(ge=1)


class RecordSchema(BaseModel):
    """What every stage may rely on: alternating user/assistant turns ending with a non-empty answer."""

    model_config = ConfigDict(extra="allow", strict=True)
    id: str = Field(min_length=16, max_length=16)
    system: str
    messages: list[MessageSchema] = Field(min_length=2)
    reasoning: str | None
    source: SourceSchema
    origin: str = Field(min_length=1)
    parent: str | None = None

    @model_validator(mode="after")
    def _alternating(self):
        roles = [m.role for m in self.messages]
        if roles != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
            raise ValueError(f"turns must alternate user/assistant and end with assistant: {roles}")
        if self.reasoning is not None and not self.reasoning.strip():
            raise ValueError("reasoning is empty")
        return self


def _conforms(record: dict) -> bool:
    """RecordSchema's rules in plain Python, for the common case: True only when the record certainly conforms
    (pydantic costs ~10 us a row, and validate checks every accepted row). On False, pydantic decides and explains."""
    try:
        rid, system, origin, parent = record["id"], record["system"], record["origin"], record.get("parent")
        messages, source, reasoning = record["messages"], record["source"], record["reasoning"]
    except (KeyError, TypeError):
        return False
    if not (
        type(rid) is str
        and len(rid) == 16
        and type(system) is str
        and type(origin) is str
        and origin
        and (parent is None or type(parent) is str)
    ):
        return False
    if not (
        type(source) is dict
        and source.keys() == {"file", "line"}
        and type(source["file"]) is str
        and type(source["line"]) is int
        and source["line"] >= 1
    ):
        return False
    if reasoning is not None and not (type(reasoning) is str and reasoning.strip()):
        return False
    if type(messages) is not list or len(messages) < 2 or len(messages) % 2:
        return False
    return all(
        type(m) is dict
        and m.keys() == {"role", "content"}
        and m["role"] == ("user", "assistant")[i % 2]
        and type(m["content"]) is str
        and m["content"]
        for i, m in enumerate(messages)
    )


def check_schema(record: dict) -> None:
    """Raise RecordError('schema') when a record breaks the declared schema (a bug upstream, never silently kept)."""
    if _conforms(record):
        return
    try:
        RecordSchema.model_validate(record)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise RecordError("schema", field, f"record breaks the schema: {first['msg']} at {field}") from None


def location(file: str, number: int) -> str:
    """How a message names a row: ``file:N`` for a line of a line-based file, ``file row N`` for a row of a JSON
    array, a CSV or a Parquet file."""
    if file.split("?")[0].lower().endswith((".json", ".csv", ".parquet")):
        return f"{file} row {number}"
    return f"{file}:{number}"


def content_key(record: dict) -> str:
    """A stable hash of what a record says (Unicode-normalized), the basis of its id and of exact dedup."""
    payload = json.dumps([record["system"], record["messages"], record["reasoning"]], ensure_ascii=False)
    return hashlib.sha256(unicodedata.normalize("NFC", payload).encode()).hexdigest()


def make_record(body: dict, file: str, line: int, origin: str = "original") -> dict:
    return {"id": content_key(body)[:16], **body, "source": {"file": file, "line": line}, "origin": origin}


def prompt_of(record: dict) -> str:
    """The last user turn: what the model is asked."""
    return next(m["content"] for m in reversed(record["messages"]) if m["role"] == "user")


def answer_of(record: dict) -> str:
    return record["messages"][-1]["content"]
