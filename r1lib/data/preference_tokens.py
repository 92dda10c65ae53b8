"""Preference rows tokenized in the R1 chat format: a prompt and two answers to it (DPO, ORPO), or one answer and a
label (KTO), from the rows r1lib/data/preference.py reads.

A preference record is an SFT record's prompt (``system``, ``messages`` ending with the last user turn, ``source``)
and its answers as assistant texts, each with or without a ``<think>...</think>`` block: ``chosen`` and ``rejected``
(a pair), or ``completion`` and ``label`` (True: desirable; unpaired, KTO).

Each row is pre-tokenized here, so the trainers never tokenize (TRL's own tokenization would add a second BOS to a
templated prompt): ``prompt_ids`` is the model's own generation prompt (``render_prompt``: BOS, system, turns,
``<｜Assistant｜>`` and, with the official template, ``<think>\\n``), tokenized without special tokens, with exactly one
BOS, at position 0; each answer side is tokenized the way the tokenize stage tokenizes an SFT completion, with the
same ``think_in_loss`` policy for both sides: keep (reasoning scored), mask (reasoning shown, not scored: its labels
are -100) or drop (answers only). Columns: ``prompt_ids``, ``chosen_ids`` / ``chosen_labels``, ``rejected_ids`` /
``rejected_labels`` (a side's labels are its ids, -100 where shown but not scored); unpaired rows have
``completion_ids`` / ``completion_labels`` and ``label``.

A pair whose two sides tokenize the same (as trained: e.g. answers that differ only in reasoning under ``drop``) or
that is longer than ``tokenize.max_seq_length`` is dropped with its reason; more dropped rows than
``tokenize.max_dropped_fraction`` fail the split (``check_dropped_pairs``). In the tokenize stage,
``PreferenceShard`` takes a shard's preference records out of its chunks and ``merge_preference`` joins the shards'
rows (tasks/tokenize.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydantic import BaseModel

from r1lib.config import TokenizeConfig
from r1lib.data.chat_template import THINK_CLOSE, THINK_OPEN, completion_text, render_prompt, split_reasoning
from r1lib.data.records import location
from r1lib.errors import DataValidationError, PermanentError
from r1lib.io import atomic_dir
from r1lib.paths import InputPath

IGNORE = -100
PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "chosen_labels", "rejected_ids", "rejected_labels")
UNPAIRED_COLUMNS = ("prompt_ids", "completion_ids", "completion_labels", "label")


def prompt_ids(tokenizer, record: dict, cfg: TokenizeConfig) -> tuple[list[int], bool]:
    """The record's generation prompt as token ids, BOS first, and whether it already opens the think block."""
    shell = {**record, "messages": [*record["messages"], {"role": "assistant", "content": ""}]}
    text = render_prompt(tokenizer, shell, cfg.system_prompt)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None and ids[:1] != [tokenizer.bos_token_id]:
        ids = [tokenizer.bos_token_id, *ids]  # templates without {{ bos_token }}
    return ids, text.rstrip(" ").endswith(f"{THINK_OPEN}\n")


def answer_ids(tokenizer, text: str, opens_think: bool, policy: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of one assistant answer after the generation prompt, under the think policy; as the tokenize
    stage encodes an SFT completion (tasks/tokenize.py: encode_row)."""
    reasoning, answer = split_reasoning(text)
    if policy == "drop":
        reasoning = None
    encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    if policy == "mask" and reasoning:
        shown = encode((f"{THINK_OPEN}\n" if not opens_think else "") + f"{reasoning.strip()}\n")
        scored = encode(f"{THINK_CLOSE}\n\n{answer.strip()}{tokenizer.eos_token}")
        return shown + scored, [IGNORE] * len(shown) + scored
    ids = encode(completion_text(reasoning, answer, opens_think))
    return ids, list(ids)


def _check_bos(tokenizer, ids: list[int], record: dict) -> None:
    bos = tokenizer.bos_token_id
    if bos is not None and (ids.count(bos) != 1 or ids[0] != bos):
        raise PermanentError(
            f"{location(record['source']['file'], record['source']['line'])}: {ids.count(bos)} BOS tokens after "
            "templating; expected exactly one at position 0 (check the model's chat template)"
        )


def _quarantined(record: dict, reason: str, message: str, tokens: int = 0) -> dict:
    where = location(record["source"]["file"], record["source"]["line"])
    return {**record["source"], "reason": reason, "field": "chosen", "message": f"{where}: {message}",
            "tokens": tokens, "record": record}  # fmt: skip


def _fit(prompt: list[int], sides: list[tuple[list[int], list[int]]], record: dict, cfg: TokenizeConfig):
    """The sides cut to ``max_seq_length`` (truncation=truncate), or a quarantine entry (drop), or a failure."""
    longest = len(prompt) + max(len(ids) for ids, _ in sides)
    if longest <= cfg.max_seq_length:
        return sides, None
    message = f"{longest} tokens exceed tokenize.max_seq_length={cfg.max_seq_length}"
    if cfg.truncation == "fail":
        raise DataValidationError(
            f"{location(record['source']['file'], record['source']['line'])}: {message} (tokenize.truncation=fail); "
            "raise tokenize.max_seq_length, or set tokenize.truncation=drop (quarantine such pairs) or truncate"
        )
    room = cfg.max_seq_length - len(prompt)
    if cfg.truncation == "drop" or room < 1:
        return None, _quarantined(record, "too_long", message, longest)
    cut = [(ids[:room], labels[:room]) for ids, labels in sides]
    if any(all(label == IGNORE for label in labels) for _, labels in cut):
        # the prompt and the reasoning shown under think_in_loss=mask fill the room: a side would train nothing
        return None, _quarantined(
            record, "too_long", f"{message}; cut to fit, a side would keep no scored token (the prompt and the "
            "reasoning shown but not scored fill it), so tokenize.truncation=truncate cannot keep the pair", longest,
        )  # fmt: skip
    return cut, None


def tokenize_pairs(tokenizer, records: list[dict], cfg: TokenizeConfig) -> tuple[list[dict], list[dict], Counter]:
    """(pair rows, quarantined records, dropped counts by reason) of preference records with chosen and rejected."""
    rows, quarantined = [], []
    for record in records:
        prompt, opens = prompt_ids(tokenizer, record, cfg)
        sides = [answer_ids(tokenizer, record[side], opens, cfg.think_in_loss) for side in ("chosen", "rejected")]
        if sides[0] == sides[1]:
            message = "chosen and rejected are the same as trained" + (
                f": they differ only in the reasoning, which tokenize.think_in_loss={cfg.think_in_loss} leaves out "
                "(think_in_loss=keep scores it)"
            ) * (cfg.think_in_loss != "keep")
            quarantined.append(_quarantined(record, "equal_sides", message))
            continue
        fitted, dropped = _fit(prompt, sides, record, cfg)
        if dropped:
            quarantined.append(dropped)
            continue
        (chosen, chosen_labels), (rejected, rejected_labels) = fitted
        _check_bos(tokenizer, prompt + chosen, record)
        _check_bos(tokenizer, prompt + rejected, record)
        rows.append({"prompt_ids": prompt, "chosen_ids": chosen, "chosen_labels": chosen_labels,
                     "rejected_ids": rejected, "rejected_labels": rejected_labels})  # fmt: skip
    return rows, quarantined, Counter(q["reason"] for q in quarantined)


def tokenize_unpaired(tokenizer, records: list[dict], cfg: TokenizeConfig) -> tuple[list[dict], list[dict], Counter]:
    """(unpaired rows, quarantined records, dropped counts by reason) of KTO records (``completion``, ``label``)."""
    rows, quarantined = [], []
    for record in records:
        prompt, opens = prompt_ids(tokenizer, record, cfg)
        side = answer_ids(tokenizer, record["completion"], opens, cfg.think_in_loss)
        fitted, dropped = _fit(prompt, [side], record, cfg)
        if dropped:
            quarantined.append({**dropped, "field": "completion"})
            continue
        ids, labels = fitted[0]
        _check_bos(tokenizer, prompt + ids, record)
        rows.append({"prompt_ids": prompt, "completion_ids": ids, "completion_labels": labels,
                     "label": bool(record["label"])})  # fmt: skip
    return rows, quarantined, Counter(q["reason"] for q in quarantined)


def unpair(rows: list[dict]) -> list[dict]:
    """Pair rows as KTO's unpaired rows: the chosen side desirable, the rejected one not (interleaved, so a batch
    holds both labels)."""
    return [
        {
            "prompt_ids": row["prompt_ids"],
            "completion_ids": row[f"{side}_ids"],
            "completion_labels": row[f"{side}_labels"],
            "label": side == "chosen",
        }  # fmt: skip
        for row in rows
        for side in ("chosen", "rejected")
    ]


def check_dropped_pairs(rows_in: int, dropped: Counter, cfg: TokenizeConfig, name: str, quarantine: str) -> None:
    """Fail when more rows were dropped (any reason) than ``tokenize.max_dropped_fraction`` allows, or none is
    left; the message counts them by reason and names the setting."""
    total = sum(dropped.values())
    if not total:
        return
    share = total / max(rows_in, 1)
    reasons = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
    fixes = ["fix the data"] + ["raise tokenize.max_seq_length"] * ("too_long" in dropped)
    if "equal_sides" in dropped and cfg.think_in_loss != "keep":  # not a length problem: the loss skips the difference
        fixes.append(f"keep the reasoning in the loss (tokenize.think_in_loss=keep, now {cfg.think_in_loss})")
    if total == rows_in or share > cfg.max_dropped_fraction:
        raise DataValidationError(
            f"{name}: {total} of {rows_in} preference rows ({share:.0%}) were dropped ({reasons}; they are in "
            f"{quarantine}). That is over tokenize.max_dropped_fraction={cfg.max_dropped_fraction:g}"
            + (" and leaves no row" if total == rows_in else "")
            + f": {', '.join(fixes)}, or raise tokenize.max_dropped_fraction"
        )


def decoded(tokenizer, row: dict, side: str = "chosen") -> dict:
    """One side of a row as text: the prompt, the shown-only part and the scored part (for eyes and tests)."""
    ids, labels = row[f"{side}_ids"], row[f"{side}_labels"]
    first = next((i for i, label in enumerate(labels) if label != IGNORE), len(ids))
    return {
        "prompt": tokenizer.decode(row["prompt_ids"]),
        "shown": tokenizer.decode(ids[:first]),
        "scored": tokenizer.decode(ids[first:]),
    }


def tokenize_preference(tokenizer, records: list[dict], cfg: TokenizeConfig, layout: str = "pairs"):
    """(rows, quarantined records, dropped counts by reason) of preference records (r1lib/data/preference.py:
    preference_record) in the ``layout`` the split is trained or scored in: ``pairs`` (DPO, ORPO, and every held-out
    set: preference accuracy compares two answers; a labelled answer alone is quarantined, reason unpaired_row) or
    ``unpaired`` (KTO: labelled answers, and each pair as one desirable and one undesirable answer)."""
    pairs = [r for r in records if r["preference"] == "pair"]
    labelled = [r for r in records if r["preference"] == "label"]
    rows, quarantined, dropped = tokenize_pairs(tokenizer, pairs, cfg)
    if layout == "unpaired":
        more, more_quarantined, more_dropped = tokenize_unpaired(tokenizer, labelled, cfg)
        return unpair(rows) + more, quarantined + more_quarantined, dropped + more_dropped
    for record in labelled:
        message = "a labelled answer with no pair: pair rows train dpo/orpo and score preference accuracy"
        quarantined.append({**_quarantined(record, "unpaired_row", message), "field": "label"})
    return rows, quarantined, dropped + Counter(unpaired_row=len(labelled))


def save_rows(rows: list[dict], path: str | Path) -> str | None:
    """Preference rows as a ``datasets.load_from_disk`` folder (None when there are none)."""
    from datasets import Dataset

    if not rows:
        return None
    with atomic_dir(Path(path)) as tmp:
        Dataset.from_list(rows).save_to_disk(str(tmp))
    return str(path)


def merge_rows(parts: list[str | None], path: str | Path) -> str | None:
    """The shards' preference rows (``save_rows`` folders, in shard order) as one folder (None when there are none)."""
    from datasets import concatenate_datasets, load_from_disk

    parts = [p for p in parts if p]
    if not parts:
        return None
    with atomic_dir(Path(path)) as tmp:
        concatenate_datasets([load_from_disk(p) for p in parts]).save_to_disk(str(tmp))
    return str(path)


class PreferenceRows(BaseModel):
    """A shard's or a split's preference rows: the ``load_from_disk`` folder (None: none) and the counts."""

    dataset: InputPath | None = None
    rows_in: int = 0  # preference records read
    rows: int = 0  # rows written (a pair split for KTO is two)
    dropped: dict[str, int] = {}

    def line(self) -> str:
        return f"{self.rows_in} preference rows -> {self.rows} rows, dropped {self.dropped or 'none'}"


class PreferenceShard:
    """The preference records of one shard of the tokenize stage, taken out of its chunks (``take``) and written as
    rows (``close``); the stage tokenizes the rest as SFT rows."""

    def __init__(self, tokenizer, cfg: TokenizeConfig, layout: str):
        self.tokenizer, self.cfg, self.layout = tokenizer, cfg, layout
        self.rows: list[dict] = []
        self.rows_in, self.dropped = 0, Counter()

    def take(self, chunk: list[dict], quarantine) -> list[dict]:
        """The chunk's SFT records; its preference records tokenized, their drops written to ``quarantine``."""
        from r1lib.data.preference import is_preference

        preferences = [r for r in chunk if is_preference(r)]
        if not preferences:
            return chunk
        rows, quarantined, dropped = tokenize_preference(self.tokenizer, preferences, self.cfg, self.layout)
        self.rows += rows
        self.rows_in += len(preferences)
        self.dropped.update(dropped)
        quarantine.write_many(quarantined)
        return [r for r in chunk if not is_preference(r)]

    def close(self, path: str | Path) -> PreferenceRows:
        dataset = save_rows(self.rows, path)
        return PreferenceRows(dataset=dataset, rows_in=self.rows_in, rows=len(self.rows), dropped=dict(self.dropped))


def merge_preference(parts: list[PreferenceRows], path: Path, cfg: TokenizeConfig, name: str, quarantine: str):
    """The shards' preference rows as one PreferenceRows; fails past tokenize.max_dropped_fraction."""
    dropped = sum((Counter(p.dropped) for p in parts), Counter())
    rows_in = sum(p.rows_in for p in parts)
    check_dropped_pairs(rows_in, dropped, cfg, name, quarantine)
    dataset = merge_rows([p.dataset for p in parts], path)
    return PreferenceRows(dataset=dataset, rows_in=rows_in, rows=sum(p.rows for p in parts), dropped=dict(dropped))
