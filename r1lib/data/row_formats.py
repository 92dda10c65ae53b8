"""The row formats a data file may use: detecting which one a row is in, and normalizing it into a record's body.

Formats recognized (detected per row from its keys; FORMATS names them): the seed's ``{"instruction", "output"}``;
Alpaca (``input`` appended to the instruction); ShareGPT ``{"conversations": [{"from", "value"}]}``; OpenAI-style
``{"messages": [{"role", "content"}]}`` (also a bare JSON array of such turns); ``{"prompt", "completion"}``; Firefly
``{"conversation": [{"human", "assistant"}]}``; Qwen/ChatGLM ``{"query", "response", "history"}``; parallel lists
``{"input": [...], "output": [...]}``; a DeepSeek reasoner dump ``{"input"|"question"|..., "reasoning_content",
"content"}``. A conversation's system prompt is its first turn or a top-level ``system`` field; a turn's content is a
string or a list of typed parts (text and reasoning parts; ``text`` or ``value`` holds the text). The last assistant
turn's reasoning is read from a ``reasoning``/``think``/``thinking``/``reasoning_content`` field of the row or of that
turn, a reasoning part, an inline ``<think>...</think>`` block at the start of its content, or Bespoke-Stratos
``<|begin_of_thought|>...<|end_of_thought|><|begin_of_solution|>...<|end_of_solution|>`` markers; two different texts
for it refuse the row.

Refused with a reason of their own: preference data (``preference_data``: DPO chosen/rejected, KTO label, ORPO,
ranked answers), plain pre-training text (``pretraining_text``), an unfilled template placeholder (``placeholder``,
unless ``data.placeholders`` fills it), tool calls in the turns; a ``tools`` list is written into the system prompt
(``data.tools``) or refused, never dropped (row_rules).
"""

from __future__ import annotations

import re
from typing import Any

from r1lib.data.chat_template import THINK_CLOSE, THINK_OPEN, split_reasoning
from r1lib.data.columns import LAYOUT_NAMES, ColumnMap, mapping_hint, recognize
from r1lib.data.records import RecordError
from r1lib.data.row_rules import RowRules, fill_placeholders, tools_prompt
from r1lib.data.visible import visible_text

FORMATS = (
    "instruction/output (Alpaca: instruction, input, output)",
    "ShareGPT (conversations: [{from, value}])",
    "OpenAI messages (messages: [{role, content}], or a bare array of them)",
    "prompt/completion",
    "Firefly (conversation: [{human, assistant}])",
    "Qwen/ChatGLM (query, response, history)",
    "parallel lists (input: [...], output: [...])",
    "DeepSeek reasoner dump (input or question, reasoning_content, content)",
    *LAYOUT_NAMES,
    "any other layout with a column mapping (data.columns)",
)

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
# Lone UTF-16 surrogates: valid in JSON escapes ("\\ud800") and in Python strings, but not encodable as UTF-8.
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")
# C0/C1 control characters other than tab, newline and carriage return, and lone surrogates.
_BAD_CHAR_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")

_PROMPT_KEYS = ("input", "question", "prompt", "instruction", "query")
_THOUGHT_RE = re.compile(
    r"^\s*<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>\s*<\|begin_of_solution\|>(.*?)<\|end_of_solution\|>\s*$",
    re.DOTALL,
)
_THOUGHT_MARKERS = ("<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>")


_TRUE, _FALSE = {"true", "1", "yes", "desirable"}, {"false", "0", "no", "undesirable"}


def kto_label(value) -> bool | None:
    """A KTO label as a bool (true/false, 1/0, "true"/"false", "yes"/"no", any case), or None if it is none of them."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    return None


def preference_shape(row: dict) -> tuple[str, str] | None:
    """(shape, key) when the row is preference data (it pairs or labels answers), else None. The rows are read into
    one structure for a preference trainer by r1lib/data/preference.py."""
    if "preferred_output" in row or "non_preferred_output" in row:
        return "OpenAI DPO (input, preferred_output, non_preferred_output)", (
            "non_preferred_output" if "non_preferred_output" in row else "preferred_output"
        )
    if "chosen_messages" in row or "rejected_messages" in row:
        return "DPO (chosen_messages/rejected_messages)", "rejected_messages"
    if "chosen" in row or "rejected" in row:
        return "DPO (chosen/rejected)", "rejected" if "rejected" in row else "chosen"
    if "response_chosen" in row or "response_rejected" in row:
        return "ORPO/reward (response_chosen/response_rejected)", "response_rejected"
    # KTO: prompt/completion/label whatever the label's type (a string "false" must not make it an SFT row to imitate);
    # beside messages, a label that reads as true/false (a messages row may carry another kind of label).
    if "kto_tag" in row or ("label" in row and ("completion" in row or kto_label(row["label"]) is not None)):
        return "KTO (a desirable/undesirable label per row)", "label" if "label" in row else "kto_tag"
    output = row.get("output")
    # Parallel input/output lists are a conversation (detect_format), not a ranking.
    if isinstance(output, list) and len(output) > 1 and not isinstance(row.get("input"), list):
        return "ranked answers (output is a list of alternatives)", "output"
    return None


def detect_format(row: dict, file: str | None = None) -> str:
    """The row's format (a FORMATS entry's short name; "columns" for a LAYOUTS layout). ``file`` names the input in
    the unknown_format message's ready-to-paste column mapping."""
    if (shape := preference_shape(row)) is not None:
        if shape[1] == "output":
            fix = "ranked answers are not paired here: give each as a chosen/rejected pair for train.method: dpo"
        else:
            method = "kto" if shape[1] in ("label", "kto_tag") else "dpo"
            fix = f"train it with a preference method: --set train.method={method} (r1lib/data/preference.py reads it)"
        raise RecordError(
            "preference_data",
            shape[1],
            f"preference data, {shape[0]}: train.method=sft trains supervised fine-tuning rows, where every answer "
            f"is a target; a rejected or undesirable answer would be learned. To use it, {fix}; or give SFT rows of "
            "the chosen answers only",
        )
    if "conversations" in row:
        return "sharegpt"
    if "messages" in row:
        return "messages"
    if isinstance(row.get("conversation"), list):
        return "firefly"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "reasoning_content" in row and "content" in row and any(k in row for k in _PROMPT_KEYS):
        return "reasoner_dump"
    if "response" in row and "output" not in row and ("query" in row or "instruction" in row):
        return "query_response"
    if isinstance(row.get("input"), list) and isinstance(row.get("output"), list):
        return "parallel_lists"
    if "instruction" in row or "output" in row:
        return "alpaca" if "input" in row else "instruction_output"
    if recognize(row) is not None:
        return "columns"
    if "text" in row:
        raise RecordError(
            "pretraining_text",
            "text",
            "plain text ('text' only): continued pre-training data, not an instruction and its answer; this pipeline "
            "fine-tunes on chat rows (" + "; ".join(FORMATS) + "). Give it as prompt/answer rows, or, for the "
            "embedded model's pre-training, as model.embedded.corpus_path",
        )
    raise RecordError(
        "unknown_format",
        None,
        f"no known format fits the keys {sorted(map(str, row))}; say which column is which, e.g. "
        f"{mapping_hint(row, file)} (roles: prompt, answer, and optionally context, reasoning, system), or use one "
        "of the accepted formats: " + "; ".join(FORMATS),
    )


def _text(row: dict, field: str, *, required: bool = True, max_chars: int) -> str:
    if field not in row or row[field] is None:
        if required:
            where = ""
            if isinstance(row.get("instances"), list):  # a BELLE / self-instruct seed task
                where = (
                    f"; this looks like a seed task whose answers are in 'instances' ({len(row['instances'])} of "
                    "them): flatten each instance into an instruction/input/output row, or map the columns with "
                    "data.columns"
                )
            raise RecordError("missing_field", field, f"field '{field}' is missing{where}")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise RecordError("wrong_type", field, f"field '{field}' must be a string, got {type(value).__name__}")
    if required and not visible_text(value):  # zero-width spaces, fillers... only: nothing a reader could see
        shown = "empty" if not value.strip() else f"empty as read (only invisible characters: {value[:20]!r})"
        raise RecordError("empty_field", field, f"field '{field}' is {shown}")
    if _BAD_CHAR_RE.search(value):  # one scan for the common, clean case; then say which
        if _SURROGATE_RE.search(value):
            raise RecordError("invalid_utf8", field, f"field '{field}' holds a lone surrogate (not encodable as UTF-8)")
        raise RecordError("control_character", field, f"field '{field}' holds a control character")
    if len(value) > max_chars:
        raise RecordError(
            "field_too_long",
            field,
            f"field '{field}' has {len(value)} characters, over data.max_field_chars={max_chars}: shorten it, or raise "
            f"data.max_field_chars (tokenize.max_seq_length still bounds what is trained)",
        )
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
        if str(item.get(role_key, "")).lower() == "pretrain":
            raise RecordError(
                "pretraining_text",
                f"{name}.{role_key}",
                f"{name} is a 'pretrain' turn: continued pre-training text, not a chat; this pipeline fine-tunes on "
                "prompt/answer rows",
            )
        if role is None:
            kind = str(item.get(role_key, "")).lower()
            why = (
                ": a tool call or its result (ShareGPT function_call/observation turns). Tool-use conversations "
                "are not trained as plain chat, and data.tools only writes a 'tools' list into the system prompt; "
                "leave these rows out, or keep only the plain turns"
                if kind in ("function_call", "observation", "tool", "tool_call", "function", "ipython")
                else f"; known roles: {sorted(ROLE_ALIASES)}"
            )
            raise RecordError(
                "unknown_role", f"{name}.{role_key}", f"{name} has unknown role {item.get(role_key)!r}{why}"
            )
        _check_calls(item, name)
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
        ending = (
            f" (it ends with a {roles[-1]} turn: no answer to train on)" if roles and roles[-1] != "assistant" else ""
        )
        raise RecordError(
            "role_order", field, f"turns must alternate user/assistant and end with assistant: {roles}{ending}"
        )


def _pairs_turns(pairs: Any, field: str, keys: tuple[str, str], max_chars: int) -> list[dict]:
    """Turns from a list of exchanges: {"human", "assistant"} objects (Firefly) or [query, response] pairs (history)."""
    if not isinstance(pairs, list) or not pairs:
        raise RecordError("wrong_type", field, f"field '{field}' must be a non-empty list of exchanges")
    turns = []
    for i, pair in enumerate(pairs):
        name = f"{field}[{i}]"
        if isinstance(pair, dict):
            extra = sorted(set(pair) - set(keys))
            if extra:
                raise RecordError("wrong_type", name, f"{name} has keys {extra}; an exchange holds only {list(keys)}")
            values = {k: pair.get(k) for k in keys}
        elif isinstance(pair, list) and len(pair) == 2:
            values = dict(zip(keys, pair))
        else:
            raise RecordError("wrong_type", name, f"{name} must be an object {list(keys)} or a [query, response] pair")
        for key, role in zip(keys, ("user", "assistant")):
            turns.append(
                {"role": role, "content": _text({f"{name}.{key}": values[key]}, f"{name}.{key}", max_chars=max_chars)}
            )
    return turns


def _parallel_turns(row: dict, max_chars: int) -> list[dict]:
    """Turns from parallel lists: input[i] is the user turn, output[i] the answer to it."""
    asks, answers = row["input"], row["output"]
    if len(asks) != len(answers) or not asks:
        raise RecordError(
            "wrong_type", "output", f"'input' has {len(asks)} turns and 'output' {len(answers)}: they must pair up"
        )
    turns = []
    for i, (ask, answer) in enumerate(zip(asks, answers)):
        turns.append({"role": "user", "content": _text({f"input[{i}]": ask}, f"input[{i}]", max_chars=max_chars)})
        turns.append(
            {"role": "assistant", "content": _text({f"output[{i}]": answer}, f"output[{i}]", max_chars=max_chars)}
        )
    return turns


def _check_calls(item: dict, name: str) -> None:
    """Tool calls in a turn cannot be trained as plain chat: the row is refused rather than trained without them."""
    for call in ("tool_calls", "function_call"):
        if item.get(call):
            raise RecordError(
                "unsupported_content",
                f"{name}.{call}",
                f"{name} calls a tool ('{call}'); only plain chat is trained, and training it without the call "
                "would teach a different answer",
            )


def _check_trained(items: list, key: str) -> None:
    """A turn marked as not trained is honoured for earlier answers (only the last one is trained) and refused for
    the last: dropping the mark silently would train what the data says not to."""
    last = items[-1]
    if isinstance(last, dict) and (last.get("loss") is False or last.get("loss_weight") in (0, 0.0)):
        raise RecordError(
            "untrained_answer",
            f"{key}[{len(items) - 1}]",
            f"the last turn of '{key}' is marked as not trained (loss false / loss_weight 0), but it is the answer "
            "this pipeline trains on",
        )


def _kept_indent(text: str, after_marker: bool = False) -> str:
    """An answer as written, less trailing whitespace and blank lines before it: the indentation of its first line
    (code, a poem) is part of it, as a user turn's is. After a marker (``</think>``), whitespace with no line break
    (``</think> 42``) is a separator."""
    head = len(text) - len(text.lstrip())
    newline = text.rfind("\n", 0, head)
    return text.strip() if newline < 0 and after_marker else text[newline + 1 :].rstrip()


def _answer_split(text: str, field: str) -> tuple[str | None, str]:
    """(reasoning, answer) of an answer text: an inline <think> block or Bespoke-Stratos thought/solution markers.
    The answer keeps the indentation of its first line (``_kept_indent``)."""
    inline, answer = split_reasoning(text)
    if inline is not None:
        return inline, _kept_indent(text[text.index(THINK_CLOSE) + len(THINK_CLOSE) :], after_marker=True)
    if THINK_OPEN in text or THINK_CLOSE in text:
        raise RecordError("unclosed_think", field, f"'{field}' has an unbalanced <think> block")
    if any(marker in text for marker in _THOUGHT_MARKERS):
        match = _THOUGHT_RE.match(text)
        if match is None:
            raise RecordError(
                "unclosed_think",
                field,
                f"'{field}' has thought/solution markers that do not form <|begin_of_thought|>...<|end_of_thought|>"
                "<|begin_of_solution|>...<|end_of_solution|>",
            )
        return match.group(1).strip(), _kept_indent(match.group(2), after_marker=True)
    return None, _kept_indent(text)


def _mapped(row: dict, columns: ColumnMap, max_chars: int) -> tuple[str, list[dict], str]:
    """(system, turns, answer field) of a row read through a column mapping. A number in a mapped column (a final
    answer 42) is its text; a missing or empty mapped column refuses the row, naming the mapping."""

    def text(role: str, required: bool = True) -> str:
        key = getattr(columns, role)
        if key is None:
            return ""
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        try:
            return _text({key: value} if key in row else {}, key, required=required, max_chars=max_chars)
        except RecordError as exc:
            raise RecordError(exc.reason, exc.field, f"{exc} (data.columns maps {role} to {key!r})") from None

    prompt, context = text("prompt"), text("context", required=False)
    if context.strip():
        prompt = f"{prompt}\n\n{context}"
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text("answer")}]
    if columns.reasoning is not None:
        turns[1]["reasoning"] = text("reasoning")
    return text("system", required=False), turns, columns.answer


def normalize(row: Any, max_chars: int = 100_000, rules: RowRules | None = None, file: str | None = None) -> dict:
    """One raw row -> a record without id/source. Raises RecordError with a reason code. ``file``: the input the
    row came from, whose ``rules.columns`` mapping (if any) says which field is which."""
    rules = rules or RowRules(max_chars=max_chars)
    max_chars = rules.max_chars
    if isinstance(row, list) and row and all(isinstance(t, dict) and "role" in t for t in row):
        row = {"messages": row}  # a bare array of OpenAI turns (one conversation per line)
    if not isinstance(row, dict):
        raise RecordError("not_an_object", None, f"row is a JSON {type(row).__name__}, not an object")
    columns = rules.columns.get(file) if file is not None else None
    fmt = "columns" if columns is not None else detect_format(row, file)
    system = ""
    if fmt == "columns":
        system, messages, field = _mapped(row, columns or recognize(row)[1], max_chars)
    elif fmt in ("instruction_output", "alpaca", "query_response", "reasoner_dump"):
        ask_key = next(k for k in _PROMPT_KEYS if k in row) if fmt == "reasoner_dump" else "instruction"
        if fmt == "query_response" and "query" in row:
            ask_key = "query"
        answer_key = {"query_response": "response", "reasoner_dump": "content"}.get(fmt, "output")
        prompt = _text(row, ask_key, max_chars=max_chars)
        extra = _text(row, "input", required=False, max_chars=max_chars) if ask_key != "input" else ""
        if extra.strip():
            prompt = f"{prompt}\n\n{extra}"
        system = _text(row, "system", required=False, max_chars=max_chars)
        history = (
            _pairs_turns(row["history"], "history", ("query", "response"), max_chars) if row.get("history") else []
        )
        messages = [
            *history,
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(row, answer_key, max_chars=max_chars)},
        ]
        field = answer_key
    elif fmt == "prompt_completion":
        messages = [
            {"role": "user", "content": _text(row, "prompt", max_chars=max_chars)},
            {"role": "assistant", "content": _text(row, "completion", max_chars=max_chars)},
        ]
        field = "completion"
    elif fmt == "firefly":
        messages = _pairs_turns(row["conversation"], "conversation", ("human", "assistant"), max_chars)
        system = _text(row, "system", required=False, max_chars=max_chars)
        field = "conversation[-1].assistant"
    elif fmt == "parallel_lists":
        messages = _parallel_turns(row, max_chars)
        system = _text(row, "system", required=False, max_chars=max_chars)
        field = "output[-1]"
    else:
        key = "conversations" if fmt == "sharegpt" else "messages"
        role_key, content_key = ("from", "value") if fmt == "sharegpt" else ("role", "content")
        messages = _turns(row[key], key, role_key, content_key, max_chars)
        _check_trained(row[key], key)
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
    for name in REASONING_FIELDS if fmt != "columns" else ():
        if name in row and row[name] is not None:
            reasoning = _agree(reasoning, _text(row, name, max_chars=max_chars), name)
    inline, answer = _answer_split(answer_turn["content"], field)
    if inline is not None:
        reasoning = _agree(reasoning, inline, field)
    if reasoning is not None and not visible_text(reasoning):
        raise RecordError("empty_reasoning", field, f"'{field}' has an empty <think> block")
    if not visible_text(answer):
        raise RecordError("empty_answer", field, f"'{field}' has no answer after its reasoning")
    answer_turn["content"] = answer
    # Earlier assistant turns keep only their answers, as the R1 template shows them.
    for turn in messages[:-1]:
        turn.pop("reasoning", None)
        if turn["role"] == "assistant":
            turn["content"] = split_reasoning(turn["content"])[1]
    if row.get("tools") not in (None, "", []):
        tools = tools_prompt(row["tools"])  # "" for an empty list (a JSON "[]" too)
        if tools and rules.tools == "refuse":
            raise RecordError(
                "tools",
                "tools",
                "the row carries a 'tools' list and data.tools is 'refuse'; data.tools=system writes the tool schemas "
                "into the system prompt and trains the row",
            )
        system = f"{system}\n\n{tools}" if system and tools else system or tools
    return fill_placeholders({"system": system, "messages": messages, "reasoning": reasoning}, rules)
