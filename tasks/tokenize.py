"""Stage 4, tokenize: render each record in the model's R1 chat format and mask the loss to the answer.

A row becomes ``prompt + completion``:
  prompt      the model's own chat template with ``add_generation_prompt=True`` (BOS, system, turns, ``<｜Assistant｜>``
              and, with the official template, ``<think>\\n``), so training sees exactly what inference sends;
  completion  ``reasoning \\n</think>\\n\\n answer <｜end▁of▁sentence｜>`` (see tasks/chat_template.py).
Both are tokenized with ``add_special_tokens=False`` (the template already holds the BOS: re-adding it is the classic
duplicate-BOS bug), and every row is checked to hold exactly one BOS, at position 0. Labels are -100 on the prompt;
``think_in_loss`` decides whether the reasoning is trained (keep), shown but not trained (mask) or left out (drop).
Rows longer than ``max_seq_length`` are dropped (to quarantine), truncated, or fail the stage, as configured.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.chat_template import THINK_CLOSE, THINK_OPEN, completion_text
from tasks.config import TokenizeConfig
from tasks.errors import DataValidationError, PermanentError
from tasks.io import atomic_dir, read_jsonl, write_json, write_jsonl
from tasks.orchestration import stage_options

log = logging.getLogger(__name__)
IGNORE = -100


class TokenizedData(BaseModel):
    dataset: str  # a datasets.Dataset saved with save_to_disk: input_ids, labels
    rows_in: int
    rows_out: int
    dropped_too_long: int
    truncated: int
    tokens: int
    trained_tokens: int
    max_length: int
    bos_ok: int
    think_in_labels: int
    eos_at_end: int
    quarantine: str


def prompt_messages(record: dict) -> list[dict]:
    system = [{"role": "system", "content": record["system"]}] if record["system"] else []
    return system + record["messages"][:-1]


def render_prompt(tokenizer, record: dict, system_prompt: str = "") -> str:
    messages = prompt_messages(record)
    if system_prompt and not record["system"]:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_row(tokenizer, record: dict, cfg: TokenizeConfig) -> dict:
    """input_ids and labels of one record (not yet length-checked)."""
    prompt = render_prompt(tokenizer, record, cfg.system_prompt)
    opens_think = prompt.rstrip(" ").endswith(f"{THINK_OPEN}\n")
    reasoning = None if cfg.think_in_loss == "drop" else record.get("reasoning")
    answer = record["messages"][-1]["content"]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and prompt_ids[:1] != [tokenizer.bos_token_id]:
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]  # templates without {{ bos_token }}
    if cfg.think_in_loss == "mask" and reasoning:
        # Reasoning is part of the input but not of the loss: it joins the prompt side of the mask.
        shown = (f"{THINK_OPEN}\n" if not opens_think else "") + f"{reasoning.strip()}\n"
        prompt_ids += tokenizer(shown, add_special_tokens=False)["input_ids"]
        completion = f"{THINK_CLOSE}\n\n{answer.strip()}{tokenizer.eos_token}"
    else:
        completion = completion_text(reasoning, answer, opens_think)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {"input_ids": prompt_ids + completion_ids,
            "labels": [IGNORE] * len(prompt_ids) + completion_ids,
            "prompt_len": len(prompt_ids)}


def tokenize_records(tokenizer, records: list[dict], cfg: TokenizeConfig) -> tuple[list[dict], list[dict], dict]:
    """(rows, quarantined rows, audit figures)."""
    rows, quarantined = [], []
    audit = {"truncated": 0, "bos_ok": 0, "think_in_labels": 0, "eos_at_end": 0}
    think_close_ids = tokenizer(THINK_CLOSE, add_special_tokens=False)["input_ids"]
    for record in records:
        row = encode_row(tokenizer, record, cfg)
        ids = row["input_ids"]
        if len(ids) > cfg.max_seq_length:
            where = f"{record['source']['file']}:{record['source']['line']}"
            message = f"{where}: {len(ids)} tokens exceed max_seq_length {cfg.max_seq_length}"
            if cfg.truncation == "fail":
                raise DataValidationError(message + " (tokenize.truncation = fail)")
            if cfg.truncation == "drop" or row["prompt_len"] >= cfg.max_seq_length:
                quarantined.append({**record["source"], "reason": "too_long", "field": "messages",
                                    "message": message, "record": record})
                continue
            row["input_ids"], row["labels"] = ids[: cfg.max_seq_length], row["labels"][: cfg.max_seq_length]
            audit["truncated"] += 1
        bos_count = row["input_ids"].count(tokenizer.bos_token_id) if tokenizer.bos_token_id is not None else 1
        if bos_count != 1 or (tokenizer.bos_token_id is not None and row["input_ids"][0] != tokenizer.bos_token_id):
            raise PermanentError(f"{record['source']}: {bos_count} BOS tokens after templating; expected exactly one "
                                 "at position 0 (check the model's chat template)")
        audit["bos_ok"] += 1
        labels = [t for t in row["labels"] if t != IGNORE]
        audit["think_in_labels"] += _contains(labels, think_close_ids)
        audit["eos_at_end"] += labels[-1:] == [tokenizer.eos_token_id]
        rows.append({"input_ids": row["input_ids"], "labels": row["labels"]})
    return rows, quarantined, audit


def _contains(seq: list[int], sub: list[int]) -> bool:
    n = len(sub)
    return any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


def decoded_example(tokenizer, row: dict) -> dict:
    """One row as text, trained part in [[...]], for eyes in the audit."""
    prompt_len = next(i for i, t in enumerate(row["labels"]) if t != IGNORE)
    return {"prompt": tokenizer.decode(row["input_ids"][:prompt_len]),
            "trained": tokenizer.decode(row["input_ids"][prompt_len:])}


def tokenize_file(tokenizer, records_path: Path, cfg: TokenizeConfig, out_dir: Path) -> TokenizedData:
    from datasets import Dataset

    records = read_jsonl(records_path)
    rows, quarantined, audit = tokenize_records(tokenizer, records, cfg)
    if not rows:
        raise DataValidationError(f"{records_path}: no row left after tokenization ({len(quarantined)} too long)")
    out_dir = Path(out_dir)
    dataset_dir = out_dir / "dataset"
    with atomic_dir(dataset_dir) as tmp:
        Dataset.from_list(rows).save_to_disk(str(tmp))
    quarantine = out_dir / "quarantine.jsonl"
    write_jsonl(quarantine, quarantined)
    lengths = [len(r["input_ids"]) for r in rows]
    result = TokenizedData(
        dataset=str(dataset_dir), rows_in=len(records), rows_out=len(rows), dropped_too_long=len(quarantined),
        tokens=sum(lengths), trained_tokens=sum(sum(t != IGNORE for t in r["labels"]) for r in rows),
        max_length=max(lengths), quarantine=str(quarantine), **audit,
    )
    write_json(out_dir / "audit.json", {**result.model_dump(), "examples": [decoded_example(tokenizer, r) for r in rows[:3]]})
    return result


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="tokenize", task_run_name="tokenize {split}", **stage_options())
def tokenize_task(records_path: str, model_dir: str, cfg: TokenizeConfig, run_dir: str, split: str = "train") -> TokenizedData:
    """Apply the R1 chat template, mask the prompt, enforce the length policy."""
    from tasks.model import load_tokenizer

    result = tokenize_file(load_tokenizer(model_dir), Path(records_path), cfg, Path(run_dir) / "tokenize" / split)
    create_table_artifact(
        key=f"tokenization-audit-{split}",
        table=[{"rows": result.rows_out, "dropped (too long)": result.dropped_too_long, "truncated": result.truncated,
                "rows with exactly one BOS": result.bos_ok, "rows with </think> in labels": result.think_in_labels,
                "rows ending in EOS": result.eos_at_end,
                "masked share": round(1 - result.trained_tokens / result.tokens, 3), "max length": result.max_length}],
        description=f"Tokenization audit ({split}).",
    )
    return result
