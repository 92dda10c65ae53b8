"""Stage 4, tokenize: render each record in the model's R1 chat format and mask the loss to the answer.

A row becomes ``prompt + completion``:
  prompt      the model's own chat template with ``add_generation_prompt=True`` (BOS, system, turns, ``<｜Assistant｜>``
              and, with the official template, ``<think>\\n``), so training sees exactly what inference sends;
  completion  ``reasoning \\n</think>\\n\\n answer <｜end▁of▁sentence｜>`` (see r1lib/data/chat_template.py).
Both are tokenized with ``add_special_tokens=False`` (the template already holds the BOS: re-adding it is the classic
duplicate-BOS bug), and every row is checked to hold exactly one BOS, at position 0. Labels are -100 on the prompt;
``think_in_loss`` decides whether the reasoning is trained (keep), shown but not trained (mask) or left out (drop).
Rows longer than ``max_seq_length`` are dropped (to quarantine), truncated, or fail the stage, as configured.

Preference records (a dpo/orpo/kto run) become pair rows, or KTO's labelled rows for a KTO training split, in a
dataset of their own beside the SFT rows (``preference/``: r1lib/data/preference_tokens.py), their drops counted and
limited the same way.

Sharded (flows/data.py): ``tokenize_shard`` writes each shard's rows to an Arrow file, chunk by chunk;
``merge_tokenized`` hard-links them, in shard order, into one ``load_from_disk`` dataset (``write_dataset``).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections import Counter
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from r1lib.compat import rust_tokenizer
from r1lib.config import TokenizeConfig
from r1lib.data.chat_template import THINK_CLOSE, THINK_OPEN, completion_text, render_prompt, render_prompts
from r1lib.data.preference_tokens import PreferenceRows, PreferenceShard, merge_preference
from r1lib.data.records import location
from r1lib.data.shards import JsonlWriter, Shard, chunked
from r1lib.data.tokenized import check_dropped, contains_run, rows_table, token_features, write_dataset
from r1lib.errors import DataValidationError, PermanentError
from r1lib.io import atomic_path, concat_files, iter_jsonl, write_json
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult

log = logging.getLogger(__name__)
IGNORE = -100
CHUNK_ROWS = 4096  # records encoded per encode_batch call in tokenize_records (bounds memory)
TOKENIZE_CHUNK = 8192  # records a tokenize_shard holds at once


class TokenizedData(StageResult):
    dataset: InputPath | None  # a datasets.Dataset saved with save_to_disk: input_ids, labels (None: no SFT row)
    preference: PreferenceRows = PreferenceRows()  # a dpo/orpo/kto run's rows (r1lib/data/preference_tokens.py)
    split: str = "train"
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
    audit: str | None = None  # audit.json

    @property
    def masked_share(self) -> float:
        return round(1 - self.trained_tokens / max(self.tokens, 1), 3)

    @property
    def label(self) -> str:
        """``tokenize`` for the training split (the summary key runs have always had), ``tokenize_<split>`` else."""
        return "tokenize" if self.split == "train" else f"tokenize_{self.split}"

    def summary(self) -> dict:
        return {
            self.label: {
                "rows_in": self.rows_in,
                "rows": self.rows_out,
                "dropped_too_long": self.dropped_too_long,
                "truncated": self.truncated,
                "masked_share": self.masked_share,
                "quarantine": self.quarantine,
                **({"preference": self.preference.model_dump()} if self.preference.rows_in else {}),
            }
        }

    def summary_lines(self) -> list[tuple[str, str]]:
        sft = (
            f"{self.rows_in} -> {self.rows_out} rows, masked share {self.masked_share}, "
            f"{self.dropped_too_long} dropped as too long, {self.truncated} truncated"
        )
        preference = [self.preference.line()] if self.preference.rows_in else []
        return [(self.label, "; ".join(([sft] if self.rows_in or not preference else []) + preference))]


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
        completion = f"{THINK_CLOSE}\n\n{answer.rstrip()}{tokenizer.eos_token}"
    else:
        completion = completion_text(reasoning, answer, opens_think)
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {
        "input_ids": prompt_ids + completion_ids,
        "labels": [IGNORE] * len(prompt_ids) + completion_ids,
        "prompt_len": len(prompt_ids),
    }


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """``tokenizer(text, add_special_tokens=False)["input_ids"]`` of each text, in one batched call: straight to the
    Rust tokenizer (``encode_batch_fast``: no offsets) when that is what the call would do anyway (the first text is
    checked against the plain call), else ``tokenizer(texts)``."""
    if not texts:
        return []
    backend = rust_tokenizer(tokenizer)
    if backend is not None:
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        ids = [e.ids for e in encode(texts, add_special_tokens=False)]
        if ids[0] == tokenizer(texts[0], add_special_tokens=False)["input_ids"]:
            return ids
        log.warning("direct Rust tokenization differs from %s's own call: using the latter", type(tokenizer).__name__)
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"]


class IdsCache:
    """Token ids of completion-side texts (completions, shown reasoning) already tokenized, so that rows sharing one
    (a record's prompt variants) tokenize it once across encode_batch calls too. Oldest out first beyond ``max_ids``
    ids. For one tokenizer only (encode_batch checks)."""

    def __init__(self, tokenizer, max_ids: int = 2_000_000):
        from collections import OrderedDict

        self.tokenizer, self.max_ids, self.size = tokenizer, max_ids, 0
        self.ids: OrderedDict[str, list[int]] = OrderedDict()

    def put(self, text: str, ids: list[int]) -> None:
        if text not in self.ids:
            self.ids[text] = ids
            self.size += len(ids)
            while self.size > self.max_ids and self.ids:
                self.size -= len(self.ids.popitem(last=False)[1])


def encode_batch(tokenizer, records: list[dict], cfg: TokenizeConfig, cache: IdsCache | None = None) -> list[dict]:
    """``encode_row`` of each record (input_ids, labels, prompt_len; equal to it), much faster: prompts rendered by
    ``render_prompts``, every distinct text (prompts, shown reasoning, completions: augmented variants share theirs)
    tokenized once, in one batched call; completion-side texts found in ``cache`` are not tokenized again. Prompt and
    completion are still tokenized separately, as in encode_row."""
    if cache is not None and cache.tokenizer is not tokenizer:
        raise ValueError("encode_batch: the IdsCache belongs to another tokenizer")
    known = cache.ids if cache is not None else {}
    prompts = render_prompts(tokenizer, records, cfg.system_prompt)
    mask, drop = cfg.think_in_loss == "mask", cfg.think_in_loss == "drop"
    think_open = f"{THINK_OPEN}\n"
    eos_token = tokenizer.eos_token
    todo: dict[str, None] = {}  # distinct texts to tokenize now, in order
    plan = []
    for record, prompt in zip(records, prompts):
        opens_think = prompt.rstrip(" ").endswith(think_open)
        reasoning = None if drop else record.get("reasoning")
        answer = record["messages"][-1]["content"]
        shown = None
        if mask and reasoning:
            shown = ("" if opens_think else think_open) + f"{reasoning.strip()}\n"
            if shown not in known:
                todo[shown] = None
            completion = f"{THINK_CLOSE}\n\n{answer.rstrip()}{eos_token}"
        else:
            completion = completion_text(reasoning, answer, opens_think)
        todo[prompt] = None
        if completion not in known:
            todo[completion] = None
        plan.append((prompt, shown, completion))
    fresh = dict(zip(todo, encode_texts(tokenizer, list(todo))))
    bos = tokenizer.bos_token_id
    rows = []
    for prompt, shown, completion in plan:
        prompt_ids = fresh[prompt]
        if bos is not None and prompt_ids[:1] != [bos]:
            prompt_ids = [bos, *prompt_ids]  # templates without {{ bos_token }}
        if shown is not None:
            prompt_ids = prompt_ids + (fresh[shown] if shown in fresh else known[shown])
        completion_ids = fresh[completion] if completion in fresh else known[completion]
        n = len(prompt_ids)
        rows.append(
            {"input_ids": prompt_ids + completion_ids, "labels": [IGNORE] * n + completion_ids, "prompt_len": n}
        )
    if cache is not None:
        for _, shown, completion in plan:
            for text in (shown, completion):
                if text is not None and text in fresh:
                    cache.put(text, fresh[text])
    return rows


def tokenize_records(
    tokenizer, records: list[dict], cfg: TokenizeConfig, cache: IdsCache | None = None
) -> tuple[list[dict], list[dict], dict]:
    """(rows, quarantined rows, audit figures). Records are encoded by encode_batch, CHUNK_ROWS at a time, sharing
    ``cache`` (one IdsCache per call when None; pass one to share it across calls, e.g. the chunks of a shard)."""
    rows, quarantined = [], []
    audit = {"truncated": 0, "bos_ok": 0, "think_in_labels": 0, "eos_at_end": 0}
    think_close_ids = tokenizer(THINK_CLOSE, add_special_tokens=False)["input_ids"]
    bos_id, eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    for record, row in _encoded(tokenizer, records, cfg, cache if cache is not None else IdsCache(tokenizer)):
        ids = row["input_ids"]
        if len(ids) > cfg.max_seq_length:
            where = location(record["source"]["file"], record["source"]["line"])
            message = f"{where}: {len(ids)} tokens exceed tokenize.max_seq_length={cfg.max_seq_length}" + (
                f"; its prompt alone is {row['prompt_len']} tokens, so tokenize.truncation=truncate cannot keep it "
                "(no answer would be left)" * (cfg.truncation == "truncate")
            )
            if cfg.truncation == "fail":
                raise DataValidationError(
                    f"{message} (tokenize.truncation=fail); raise tokenize.max_seq_length, or set "
                    "tokenize.truncation=truncate (cut the answer) or drop (quarantine such rows)"
                )
            if cfg.truncation == "drop" or row["prompt_len"] >= cfg.max_seq_length:
                quarantined.append(
                    {
                        **record["source"],
                        "reason": "too_long",
                        "field": "messages",
                        "message": message,
                        "tokens": len(ids),
                        "origin": record.get("origin", "original"),
                        "record": record,
                    }
                )
                continue
            row["input_ids"], row["labels"] = ids[: cfg.max_seq_length], row["labels"][: cfg.max_seq_length]
            audit["truncated"] += 1
        bos_count = row["input_ids"].count(bos_id) if bos_id is not None else 1
        if bos_count != 1 or (bos_id is not None and row["input_ids"][0] != bos_id):
            raise PermanentError(
                f"{record['source']}: {bos_count} BOS tokens after templating; expected exactly one "
                "at position 0 (check the model's chat template)"
            )
        audit["bos_ok"] += 1
        # The labels that are not IGNORE: exactly those after the prompt (token ids are never -100).
        labels = row["labels"][row["prompt_len"] :]
        audit["think_in_labels"] += contains_run(labels, think_close_ids)
        audit["eos_at_end"] += labels[-1:] == [eos_id]
        rows.append({"input_ids": row["input_ids"], "labels": row["labels"]})
    return rows, quarantined, audit


def _encoded(tokenizer, records, cfg: TokenizeConfig, cache: IdsCache):
    """(record, encode_row's row) of each record, encoded CHUNK_ROWS records at a time by encode_batch."""
    from itertools import islice

    it = iter(records)
    while chunk := list(islice(it, CHUNK_ROWS)):
        yield from zip(chunk, encode_batch(tokenizer, chunk, cfg, cache))


def decoded_example(tokenizer, row: dict) -> dict:
    """One row as text, trained part in [[...]], for eyes in the audit."""
    prompt_len = next(i for i, t in enumerate(row["labels"]) if t != IGNORE)
    return {
        "prompt": tokenizer.decode(row["input_ids"][:prompt_len]),
        "trained": tokenizer.decode(row["input_ids"][prompt_len:]),
    }


class TokenizedShard(BaseModel):
    arrow: InputPath  # the rows (input_ids, labels) as a datasets Arrow file
    digest: str  # xxh3-128 of that file
    quarantine: InputPath
    rows_in: int
    rows_out: int
    tokens: int
    trained_tokens: int
    max_length: int
    audit: dict[str, int]
    examples: list[dict]  # the first rows, decoded, for the audit
    longest_dropped: int = 0  # tokens of the longest row dropped as too long
    dropped_origins: dict[str, int] = {}  # the dropped rows by origin: originals and which augmentations
    origins: dict[str, int] = {}  # every row by origin (a drop count says how many rows augmentation added)
    preference: PreferenceRows = PreferenceRows()


def tokenize_shard(
    tokenizer, shard: Shard, cfg: TokenizeConfig, out_prefix: Path, layout: str = "pairs"
) -> TokenizedShard:
    """The map unit: one shard of records to an Arrow file of rows (streamed in chunks) and its quarantine part; its
    preference records to preference rows in ``layout`` (pairs, or unpaired: preference_tokens.py)."""
    import numpy as np
    import pyarrow.compute as pc
    import xxhash
    from datasets.arrow_writer import ArrowWriter

    arrow = Path(f"{out_prefix}.arrow")
    totals = {"truncated": 0, "bos_ok": 0, "think_in_labels": 0, "eos_at_end": 0}
    rows_in = rows_out = tokens = trained = longest = longest_dropped = 0
    examples: list[dict] = []
    origins: dict[str, int] = {}
    every: Counter = Counter()
    preferences = PreferenceShard(tokenizer, cfg, layout)
    with atomic_path(arrow) as tmp, JsonlWriter(f"{out_prefix}.quarantine.jsonl") as quarantine:
        writer = ArrowWriter(features=token_features(), path=str(tmp))
        try:
            for chunk in chunked(iter_jsonl(Path(shard.path)), TOKENIZE_CHUNK):
                chunk = preferences.take(chunk, quarantine)
                rows, quarantined, audit = tokenize_records(tokenizer, chunk, cfg)
                rows_in += len(chunk)
                every.update(r.get("origin", "original").split(":")[0] for r in chunk)
                quarantine.write_many(quarantined)
                longest_dropped = max([longest_dropped, *(q["tokens"] for q in quarantined)])
                for q in quarantined:
                    origins[q["origin"].split(":")[0]] = origins.get(q["origin"].split(":")[0], 0) + 1
                for key in totals:
                    totals[key] += audit[key]
                if not rows:
                    continue
                if len(examples) < 3:
                    examples += [decoded_example(tokenizer, r) for r in rows[: 3 - len(examples)]]
                table = rows_table(rows)
                labels = table.column("labels").combine_chunks().values.to_numpy()
                rows_out += len(rows)
                tokens += len(labels)
                trained += int(np.count_nonzero(labels != IGNORE))
                longest = max(longest, pc.max(pc.list_value_length(table.column("input_ids"))).as_py())
                writer.write_table(table)
            writer.finalize()
        finally:
            writer.close()
        digest = xxhash.xxh3_128()
        with open(tmp, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        return TokenizedShard(
            arrow=str(arrow),
            digest=digest.hexdigest(),
            quarantine=quarantine.close().path,
            rows_in=rows_in,
            rows_out=rows_out,
            tokens=tokens,
            trained_tokens=trained,
            max_length=longest,
            audit=totals,
            examples=examples,
            longest_dropped=longest_dropped,
            dropped_origins=origins,
            origins=dict(every),
            preference=preferences.close(f"{out_prefix}.preference"),
        )


def merge_tokenized(
    parts: list[TokenizedShard], out_dir: Path, name: str, cfg: TokenizeConfig | None = None
) -> TokenizedData:
    """The shards' rows as one dataset (``out_dir/dataset``), their quarantine parts joined, the audit summed; fails
    when more rows were dropped as too long than ``cfg.max_dropped_fraction`` allows (check_dropped)."""
    import xxhash

    out_dir = Path(out_dir)
    full = [p for p in parts if p.rows_out]
    dropped = sum(p.rows_in - p.rows_out for p in parts)
    # Joined before the limit is checked: a refusal names this file, so it must hold the dropped rows.
    quarantine = concat_files(out_dir / "quarantine.jsonl", [p.quarantine for p in parts])
    origins: Counter = Counter()
    every: Counter = Counter()
    for part in parts:
        origins.update(part.dropped_origins)
        every.update(part.origins)
    rows_in = sum(p.rows_in for p in parts)
    longest = max((p.longest_dropped for p in parts), default=0)
    check_dropped(rows_in, dropped, longest, dict(origins), cfg or TokenizeConfig(), name, str(quarantine), dict(every))
    parts_preference = [p.preference for p in parts]
    preference = merge_preference(
        parts_preference, out_dir / "preference", cfg or TokenizeConfig(), name, str(quarantine)
    )
    if not full and not preference.rows:
        raise DataValidationError(f"{name}: no row to tokenize")
    fingerprint = xxhash.xxh3_64("".join(p.digest for p in full).encode()).hexdigest()
    if full:
        write_dataset([p.arrow for p in full], fingerprint, out_dir / "dataset")
    audit = {key: sum(p.audit[key] for p in parts) for key in parts[0].audit}
    result = TokenizedData(
        split=name,
        dataset=str(out_dir / "dataset") if full else None,
        preference=preference,
        rows_in=sum(p.rows_in for p in parts),
        rows_out=sum(p.rows_out for p in parts),
        dropped_too_long=dropped,
        tokens=sum(p.tokens for p in parts),
        trained_tokens=sum(p.trained_tokens for p in parts),
        max_length=max((p.max_length for p in full), default=0),
        quarantine=str(quarantine),
        audit=str(out_dir / "audit.json"),
        **audit,
    )
    # Paths relative to out_dir: the same data gives the same bytes in any run directory.
    write_json(
        Path(result.audit),
        {
            **result.model_dump(exclude={"audit"}),
            "dataset": "dataset",
            "quarantine": "quarantine.jsonl",
            "examples": full[0].examples if full else [],
        },
    )
    return result


def tokenize_file(
    tokenizer, records_path: Path, cfg: TokenizeConfig, out_dir: Path, split: str = "train"
) -> TokenizedData:
    """The whole stage in this process on one file of records (the flow maps tokenize_shard over shards instead)."""
    part = tokenize_shard(tokenizer, Shard.of(records_path), cfg, Path(out_dir) / "shards" / "part-0000")
    return merge_tokenized([part], out_dir, split, cfg)


# --- Prefect ------------------------------------------------------------------------------------------------------


_TOKENIZER_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _load_tokenizer(model_dir: str, trust_remote_code: bool):
    from r1lib.model.loading import load_tokenizer

    return load_tokenizer(model_dir, trust_remote_code=trust_remote_code)


def _tokenizer(model_dir: str, trust_remote_code: bool):
    """One tokenizer per worker process and model (a worker runs many shards). Loaded under a lock: threads of the
    default runner importing transformers at once can see it half-initialized."""
    with _TOKENIZER_LOCK:
        return _load_tokenizer(model_dir, trust_remote_code)


@task(name="tokenize-shard", task_run_name="tokenize {split} {index}", **stage_options())
def tokenize_shard_task(
    shard: Shard,
    model_dir: InputPath,
    cfg: TokenizeConfig,
    split: str,
    index: int,
    out_dir: OutputPath,
    trust_remote_code: bool = False,
    layout: str = "pairs",
) -> TokenizedShard:
    """Apply the R1 chat template, mask the prompt, enforce the length policy on one shard. ``trust_remote_code``:
    the model.trust_remote_code setting, for a tokenizer that ships code; ``layout``: of its preference rows."""
    tokenizer = _tokenizer(model_dir, trust_remote_code)
    return tokenize_shard(tokenizer, shard, cfg, Path(out_dir, split, "shards", f"{split}-{index:04d}"), layout)


@task(name="tokenize", task_run_name="tokenize {split}", **stage_options())
def tokenize_merge_task(
    parts: list[TokenizedShard], split: str, out_dir: OutputPath, cfg: TokenizeConfig | None = None
) -> TokenizedData:
    """The tokenized shards as one dataset, with its audit; fails past tokenize.max_dropped_fraction."""
    result = merge_tokenized(parts, Path(out_dir, split), split, cfg)
    checks = {
        "rows": result.rows_out,
        "dropped (too long)": result.dropped_too_long,
        "truncated": result.truncated,
        "rows with exactly one BOS": result.bos_ok,
        "rows with </think> in labels": result.think_in_labels,
        "rows ending in EOS": result.eos_at_end,
        "masked share": result.masked_share,
        "max length": result.max_length,
    }
    create_table_artifact(
        key=f"tokenization-audit-{split}",
        table=[{"check": name, "value": value} for name, value in checks.items()],  # one per row: fits the page
        description=f"Tokenization audit ({split}).",
    )
    return result
