"""Preference rows, recognized by name and normalized into one structure for a preference trainer.

An SFT run refuses them (reason ``preference_data``: a rejected answer would be learned); a preference run
(train.method dpo, orpo, kto) accepts them as preference records (``preference_record``). This module reads every
layout into one structure first::

    {"kind": "pair",  "shape": ..., "system": "", "prompt": [turns ending with a user turn],
     "chosen": {"content": ..., "reasoning": ... or None}, "rejected": {...}}
    {"kind": "label", "shape": ..., "system": "", "prompt": [...], "completion": {...}, "label": true | false}

Layouts: OpenAI DPO (``input.messages`` / ``preferred_output`` / ``non_preferred_output``); ``prompt`` / ``chosen`` /
``rejected`` with strings or message lists, or TRL's implicit prompt (``chosen`` and ``rejected`` are whole
conversations sharing the prompt); LLaMA-Factory ShareGPT (``conversations`` with ``chosen``/``rejected`` turns) and
Alpaca (``instruction``/``input``) DPO; LLaMA-Factory v1 ``chosen_messages``/``rejected_messages``; ORPO/reward
``question``/``response_chosen``/``response_rejected``; KTO ``messages`` + ``label`` or ``prompt``/``completion``/
``label``. Ranked answer lists are refused by name (preference_shape) but not paired here.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import Any

from r1lib.data.records import RecordError
from r1lib.data.row_formats import _answer_split, _text, _turns, kto_label, preference_shape
from r1lib.data.visible import visible_text

_PROMPT_TEXT_KEYS = ("prompt", "question", "instruction", "query", "input")


def _answer(value: Any, field: str, max_chars: int) -> tuple[list[dict], dict]:
    """(turns before the answer, the answer) of a chosen/rejected value: a string, one turn ({role, content} or
    {from, value}), or a list of turns whose last is the assistant's answer."""
    if value is None:  # present but null: not "missing", and no answer to prefer or reject
        raise RecordError("empty_field", field, f"field '{field}' is null: a pair needs both answers as text")
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list):
        role_key, content_key = ("from", "value") if value and "from" in value[0] else ("role", "content")
        turns = _turns(value, field, role_key, content_key, max_chars)
        last = turns.pop()
        if last["role"] != "assistant":
            raise RecordError("role_order", field, f"'{field}' must end with an assistant turn")
        text, reasoning = last["content"], last.get("reasoning")
    else:
        text, reasoning = _text({field: value}, field, max_chars=max_chars), None
        turns = []
    inline, answer = _answer_split(text, field)
    return turns, {"content": answer, "reasoning": reasoning if inline is None else inline}


def _prompt(row: dict, max_chars: int) -> list[dict]:
    """The prompt turns of a row: an OpenAI ``input.messages``, ShareGPT ``conversations``, ``messages``, a
    ``prompt`` list, or a prompt text (with Alpaca's ``input`` appended to an ``instruction``). [] when the prompt
    lives inside the answers (TRL's implicit prompt)."""
    if isinstance(row.get("input"), dict) and "messages" in row["input"]:
        return _turns(row["input"]["messages"], "input.messages", "role", "content", max_chars)
    if "conversations" in row:
        return _turns(row["conversations"], "conversations", "from", "value", max_chars)
    for key in ("messages", "prompt"):
        if isinstance(row.get(key), list):
            return _turns(row[key], key, "role", "content", max_chars)
    key = next((k for k in _PROMPT_TEXT_KEYS if isinstance(row.get(k), str)), None)
    if key is None:
        return []
    text = _text(row, key, max_chars=max_chars)
    if key == "instruction" and isinstance(row.get("input"), str) and row["input"].strip():
        text = f"{text}\n\n{_text(row, 'input', max_chars=max_chars)}"
    return [{"role": "user", "content": text}]


def _split_system(turns: list[dict], row: dict, max_chars: int) -> tuple[str, list[dict]]:
    """(system prompt, the other turns): a row's ``system`` or a leading system turn; both, differing, refuse it."""
    system = _text(row, "system", required=False, max_chars=max_chars) if isinstance(row.get("system"), str) else ""
    if turns and turns[0]["role"] == "system":
        turn = turns.pop(0)["content"]
        if system.strip() and visible_text(system) != visible_text(turn):
            raise RecordError(
                "conflicting_system",
                "system",
                f"field 'system' ({system[:60]!r}) and the system turn of the conversation ({turn[:60]!r}) differ: "
                "which one the answers were written for cannot be known; keep one",
            )
        system = turn
    return system, turns


def _check_prompt(prompt: list[dict], field: str, kind: str) -> None:
    """Refuse a prompt that is not user and assistant turns alternating from a user turn to a last user turn (as an
    SFT row's turns before its answer are): an answer to no question, an answer after an answer, or a system turn
    after the first, which the chat template would move to the top."""
    roles = [t["role"] for t in prompt]
    if not roles or roles[-1] != "user":
        ending = f" (its last turn is {roles[-1]})" if roles else " (it has none: no question to answer)"
        raise RecordError("role_order", field, f"the prompt of a {kind} must end with a user turn{ending}")
    if roles != ["user", "assistant"] * (len(roles) // 2) + ["user"]:
        raise RecordError(
            "role_order",
            field,
            f"the prompt of a {kind} must alternate user/assistant turns from a user turn (a system turn first at "
            f"most): {roles}",
        )


def _check_answered(side: dict, field: str, preferred: str) -> None:
    """Refuse a preferred answer that is reasoning with nothing after it (an SFT row's is refused alike): the
    trainer would teach the model to stop once it has thought. A rejected one may be so: not answering is bad."""
    if side["reasoning"] is not None and not visible_text(side["content"]).strip():
        raise RecordError(
            "empty_answer",
            field,
            f"'{field}' ({preferred}) has no answer after its reasoning: training would prefer thinking without "
            "answering; give its answer, or leave the row out",
        )


def _row_prompt_conflict(row: dict, conversation: list[dict], max_chars: int) -> None:
    """Refuse a row-level ``prompt`` (or question, instruction...) beside answers that are whole conversations when
    it asks something else than they do: TRL's implicit prompt is the conversations', and the row's would be dropped."""
    if "messages" in row or "conversations" in row:
        return  # messages beside conversations repeat the chosen one (Firefly, UltraFeedback)
    given = [t for t in _prompt(row, max_chars) if t["role"] != "system"]
    asked = [t for t in conversation if t["role"] != "system"]
    if given and [(t["role"], visible_text(t["content"])) for t in given] != [
        (t["role"], visible_text(t["content"])) for t in asked
    ]:
        key = next(k for k in ("prompt", *_PROMPT_TEXT_KEYS) if k in row)
        raise RecordError(
            "conflicting_prompt",
            key,
            f"field '{key}' ({given[-1]['content'][:60]!r}) is not the prompt the 'chosen'/'rejected' conversations "
            f"answer ({asked[-1]['content'][:60] if asked else ''!r}): keep one prompt",
        )


def normalize_preference(row: Any, max_chars: int = 100_000) -> dict:
    """One preference row -> the structure above. Raises RecordError (``not_preference`` for a row that pairs or
    labels no answers; the usual reasons for a broken one)."""
    shape = preference_shape(row) if isinstance(row, dict) else None
    if shape is None or shape[1] == "output":
        raise RecordError("not_preference", None, "the row pairs or labels no answers")
    name = shape[0]
    if shape[1] == "label" or shape[1] == "kto_tag":
        key = "label" if "label" in row else "kto_tag"
        label = kto_label(row[key])
        if label is None:
            raise RecordError(
                "wrong_type",
                key,
                f"field '{key}' must be true or false (a KTO row's label: desirable or not, for train.method=kto), "
                f"got {json.dumps(row[key])[:80]}",
            )
        if "completion" in row:
            prompt, (before, completion) = _prompt(row, max_chars), _answer(row["completion"], "completion", max_chars)
        else:
            before, completion = _answer(row["messages"], "messages", max_chars)
            prompt = []
        system, prompt = _split_system(prompt + before, row, max_chars)
        _check_prompt(prompt, "completion" if "completion" in row else "messages", "labelled answer")
        if label:
            _check_answered(completion, "completion" if "completion" in row else "messages", "labelled desirable")
        return {"kind": "label", "shape": name, "system": system, "prompt": prompt, "completion": completion,
                "label": label}  # fmt: skip
    keys = {
        "non_preferred_output": ("preferred_output", "non_preferred_output"),
        "preferred_output": ("preferred_output", "non_preferred_output"),
        "rejected_messages": ("chosen_messages", "rejected_messages"),
        "response_rejected": ("response_chosen", "response_rejected"),
    }.get(shape[1], ("chosen", "rejected"))
    if not all(k in row for k in keys):
        raise RecordError("missing_field", keys[1] if keys[0] in row else keys[0], f"a pair needs both {list(keys)}")
    label = next((k for k in ("label", "kto_tag") if k in row and kto_label(row[k]) is not None), None)
    if label is not None:  # a pair and a KTO label: which one the data means cannot be known, never one dropped
        raise RecordError(
            "ambiguous_preference",
            label,
            f"field '{label}' ({json.dumps(row[label])}) is a KTO label beside the pair '{keys[0]}'/'{keys[1]}': "
            f"is the row a pair (train.method=dpo) or a labelled answer (train.method=kto)? Remove '{label}' to "
            "train it as a pair, or give the labelled answer as prompt/completion/label",
        )
    before_c, chosen = _answer(row[keys[0]], keys[0], max_chars)
    before_r, rejected = _answer(row[keys[1]], keys[1], max_chars)
    _check_answered(chosen, keys[0], "the preferred answer")
    if before_c != before_r:
        raise RecordError("conflicting_prompt", keys[1], f"'{keys[0]}' and '{keys[1]}' answer different prompts")
    # Whole conversations as answers (TRL's implicit prompt, UltraFeedback/Firefly) carry the prompt; a row-level
    # prompt or messages beside them repeats it (messages: the chosen conversation again) and is not prepended.
    if before_c:
        _row_prompt_conflict(row, before_c, max_chars)
    prompt = [] if before_c else _prompt(row, max_chars)
    system, prompt = _split_system(prompt + before_c, row, max_chars)
    if not before_c and prompt and prompt[-1]["role"] == "assistant" and isinstance(row.get("messages"), list):
        raise RecordError(
            "role_order",
            "messages",
            f"'messages' ends with an assistant turn beside '{keys[0]}'/'{keys[1]}': it is a whole conversation, not "
            "the prompt of the pair; give the prompt as 'prompt' or as 'messages' ending with the user turn",
        )
    null = next((k for k in (*_PROMPT_TEXT_KEYS, "messages", "conversations") if k in row and row[k] is None), None)
    if not prompt and null is not None:  # the prompt given as null: no prompt, not a prompt in the wrong order
        raise RecordError("empty_field", null, f"field '{null}' is null: a pair needs its prompt as text or turns")
    _check_prompt(prompt, keys[0], "pair")
    if visible_text(side_text(chosen)) == visible_text(side_text(rejected)):
        raise RecordError(
            "equal_sides",
            keys[1],
            f"'{keys[0]}' and '{keys[1]}' are the same answer (compared as read: whitespace and invisible characters "
            "such as zero-width spaces ignored): a pair that prefers an answer to itself teaches nothing; make "
            f"'{keys[1]}' the worse answer or leave the row out",
        )
    return {"kind": "pair", "shape": name, "system": system, "prompt": prompt, "chosen": chosen, "rejected": rejected}


def side_text(side: dict) -> str:
    """One normalized answer as the assistant text a preference record holds: ``<think>`` block first when it has
    reasoning (r1lib/data/chat_template.py: split_reasoning reads it back)."""
    if side["reasoning"]:
        return f"<think>\n{side['reasoning'].strip()}\n</think>\n\n{side['content']}"
    return side["content"]


def preference_record(row: dict, file: str, line: int) -> dict:
    """A normalized preference row (``normalize_preference``) as the record the data stages carry: the prompt as an
    SFT record's ``system`` and ``messages`` (ending with the last user turn), ``preference`` = ``pair`` with
    ``chosen`` and ``rejected`` texts, or ``label`` with ``completion`` and ``label``. Its id hashes all of it (two
    pairs for one prompt are two records)."""
    if row["kind"] == "pair":
        answers = {"chosen": side_text(row["chosen"]), "rejected": side_text(row["rejected"])}
    else:
        answers = {"completion": side_text(row["completion"]), "label": row["label"]}
    payload = json.dumps([row["system"], row["prompt"], answers], ensure_ascii=False)
    return {
        "id": hashlib.sha256(unicodedata.normalize("NFC", payload).encode()).hexdigest()[:16],
        "system": row["system"],
        "messages": row["prompt"],
        "reasoning": None,
        "preference": row["kind"],
        **answers,
        "source": {"file": file, "line": line},
        "origin": "original",
    }


def is_preference(record: dict) -> bool:
    """Whether a record is a preference record (``preference_record``), not an SFT one."""
    return "preference" in record


def preference_texts(record: dict) -> list[tuple[str, str]]:
    """(field, text) of a preference record's answers ([] for an SFT record): what dedup compares and debias
    searches beside the prompt."""
    if record.get("preference") == "pair":
        return [("chosen", record["chosen"]), ("rejected", record["rejected"])]
    if record.get("preference") == "label":
        return [("completion", record["completion"]), ("label", str(record["label"]).lower())]
    return []
