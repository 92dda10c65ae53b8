"""The one internal record every input format is normalized into, and the format detection that gets it there.

A record is a plain dict (cheap to stream as JSON lines)::

    {"id": "<sha256 of the content>",
     "system": "" ,
     "messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": <answer only>}, ...],
     "reasoning": "<thinking of the last assistant turn>" or None,
     "source": {"file": ..., "line": ...},
     "origin": "original" | "prompt_template:<n>" | "replay" | "counterfactual" ...}

Formats recognized (detected per row from its keys): the seed's ``{"instruction", "output"}``; Alpaca (``input``
appended to the instruction); ShareGPT ``{"conversations": [{"from", "value"}]}``; OpenAI-style ``{"messages": [{"role",
"content"}]}``; ``{"prompt", "completion"}``. A conversation's system prompt is its first turn or a top-level ``system``
field; a turn's content is a string or a list of typed parts (text and reasoning parts; ``text`` or ``value`` holds the
text). The last assistant turn's reasoning is read from a ``reasoning``/``think``/``thinking``/``reasoning_content``
field of the row or of that turn, a reasoning part, or an inline ``<think>...</think>`` block at the start of its
content; two different texts for it refuse the row.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from r1lib.chat_template import THINK_CLOSE, THINK_OPEN, split_reasoning

ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
}
REASONING_FIELDS = ("reasoning", "think", "thinking", "reasoning_content")
REASONING_PARTS = ("reasoning", "thinking")  # typed content parts that hold a turn's reasoning
# C0/C1 control characters other than tab, newline and carriage return.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Lone UTF-16 surrogates: valid in JSON escapes ("\\ud800") and in Python strings, but not encodable as UTF-8.
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
_BAD_CHAR_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


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


def detect_format(row: dict) -> str:
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        return "messages"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "instruction" in row or "output" in row:
        return "alpaca" if "input" in row else "instruction_output"
    raise RecordError("unknown_format", None, f"no known format fits the keys {sorted(row)[:8]}")


def _text(row: dict, field: str, *, required: bool = True, max_chars: int) -> str:
    if field not in row or row[field] is None:
        if required:
            raise RecordError("missing_field", field, f"field '{field}' is missing")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise RecordError("wrong_type", field, f"field '{field}' must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise RecordError("empty_field", field, f"field '{field}' is empty")
    if _BAD_CHAR_RE.search(value):  # one scan for the common, clean case; then say which
        if _SURROGATE_RE.search(value):
            raise RecordError("invalid_utf8", field, f"field '{field}' holds a lone surrogate (not encodable as UTF-8)")
        raise RecordError("control_character", field, f"field '{field}' holds a control character")
    if len(value) > max_chars:
        raise RecordError("field_too_long", field, f"field '{field}' has {len(value)} characters (limit {max_chars})")
    return value


def _turns(items: Any, field: str, role_key: str, content_key: str, max_chars: int) -> list[dict]:
    """The turns, each {"role", "content"} plus "reasoning" where the turn carries its own (see _content)."""
    if not isinstance(items, list) or not items:
        raise RecordError("wrong_type", field, f"field '{field}' must be a non-empty list of turns")
    turns = []
    for i, item in enumerate(items):
        name = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise RecordError("wrong_type", name, f"{name} must be an object")
        role = ROLE_ALIASES.get(str(item.get(role_key, "")).lower())
        if role is None:
            raise RecordError("unknown_role", f"{name}.{role_key}", f"{name} has unknown role {item.get(role_key)!r}")
        content, reasoning = _content(item, name, content_key, max_chars)
        # The DeepSeek API shape: the assistant message carries its reasoning beside its content.
        for key in REASONING_FIELDS:
            if item.get(key) is not None:
                reasoning = _agree(reasoning, _text(item, key, max_chars=max_chars), f"{name}.{key}")
        if reasoning is not None and role != "assistant":
            raise RecordError("unsupported_content", name, f"{name} is a {role} turn with reasoning")
        turns.append({"role": role, "content": content} | ({"reasoning": reasoning} if reasoning is not None else {}))
    return turns


def _content(item: dict, name: str, content_key: str, max_chars: int) -> tuple[str, str | None]:
    """(text, reasoning) of one turn. Content is a string, or a list of typed parts (OpenAI's {"type", "text"},
    LLaMA-Factory's {"type", "value"}): text parts are joined as OpenAI joins them (with nothing between), reasoning
    or thinking parts are the turn's reasoning. Any other part (an image, a tool call) cannot be trained as text: the
    row is refused rather than trained without it."""
    parts, whole = item.get(content_key), f"{name}.{content_key}"
    if not isinstance(parts, list):
        return _text({whole: parts}, whole, max_chars=max_chars), None
    texts, reasoning = [], None
    for j, part in enumerate(parts):
        where = f"{name}.{content_key}[{j}]"
        if not isinstance(part, dict):
            raise RecordError("wrong_type", where, f"{where} must be an object with a 'type'")
        kind = part.get("type")
        key = "text" if "text" in part else "value"
        if kind == "text":
            texts.append(_text({where: part.get(key)}, where, required=False, max_chars=max_chars))
        elif kind in REASONING_PARTS:
            reasoning = _agree(reasoning, _text({where: part.get(key)}, where, max_chars=max_chars), where)
        else:
            raise RecordError(
                "unsupported_content",
                f"{where}.type",
                f"{where} is a {kind!r} part; only text and reasoning parts can be trained",
            )
    return _text({whole: "".join(texts)}, whole, max_chars=max_chars), reasoning


def _agree(known: str | None, found: str, field: str) -> str:
    """One reasoning text from two places: the same text, or the row is refused (never pick one silently)."""
    if known is not None and known != found:
        raise RecordError(
            "conflicting_reasoning", field, f"'{field}' differs from the reasoning given elsewhere for the same turn"
        )
    return found


def _check_order(messages: list[dict], field: str) -> None:
    roles = [m["role"] for m in messages]
    expected = ["user", "assistant"] * (len(roles) // 2 + 1)
    if not roles or roles != expected[: len(roles)] or roles[-1] != "assistant":
        raise RecordError("role_order", field, f"turns must alternate user/assistant and end with assistant: {roles}")


def normalize(row: Any, max_chars: int = 100_000) -> dict:
    """One raw row -> a record without id/source. Raises RecordError with a reason code."""
    if not isinstance(row, dict):
        raise RecordError("not_an_object", None, f"row is a JSON {type(row).__name__}, not an object")
    fmt = detect_format(row)
    system = ""
    if fmt == "instruction_output" or fmt == "alpaca":
        prompt = _text(row, "instruction", max_chars=max_chars)
        extra = _text(row, "input", required=False, max_chars=max_chars)
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        system = _text(row, "system", required=False, max_chars=max_chars)
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(row, "output", max_chars=max_chars)},
        ]
        field = "output"
    elif fmt == "prompt_completion":
        messages = [
            {"role": "user", "content": _text(row, "prompt", max_chars=max_chars)},
            {"role": "assistant", "content": _text(row, "completion", max_chars=max_chars)},
        ]
        field = "completion"
    else:
        key = "conversations" if fmt == "sharegpt" else "messages"
        role_key, content_key = ("from", "value") if fmt == "sharegpt" else ("role", "content")
        messages = _turns(row[key], key, role_key, content_key, max_chars)
        # OpenThoughts / Bespoke-Stratos keep the system prompt beside the turns, others as the first turn.
        system = _text(row, "system", required=False, max_chars=max_chars)
        if messages[0]["role"] == "system":
            first = messages.pop(0)["content"]
            if system and system != first:
                raise RecordError(
                    "conflicting_system", "system", f"field 'system' differs from the system turn {key}[0]"
                )
            system = first
        field = f"{key}[-1]"
    _check_order(messages, field)

    answer_turn = messages[-1]
    reasoning = answer_turn.pop("reasoning", None)
    for name in REASONING_FIELDS:
        if name in row and row[name] is not None:
            reasoning = _agree(reasoning, _text(row, name, max_chars=max_chars), name)
    inline, answer = split_reasoning(answer_turn["content"])
    if inline is not None:
        reasoning = _agree(reasoning, inline, field)
    elif THINK_OPEN in answer_turn["content"] or THINK_CLOSE in answer_turn["content"]:
        raise RecordError("unclosed_think", field, f"'{field}' has an unbalanced <think> block")
    if reasoning is not None and not reasoning.strip():
        raise RecordError("empty_reasoning", field, f"'{field}' has an empty <think> block")
    if not answer:
        raise RecordError("empty_answer", field, f"'{field}' has no answer after its reasoning")
    answer_turn["content"] = answer
    # Earlier assistant turns keep only their answers, as the R1 template shows them.
    for turn in messages[:-1]:
        turn.pop("reasoning", None)
        if turn["role"] == "assistant":
            turn["content"] = split_reasoning(turn["content"])[1]
    return {"system": system, "messages": messages, "reasoning": reasoning}


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
