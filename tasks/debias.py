"""Stage 3, debias: blocklist filtering, counterfactual augmentation, and a measured bias report.

- Blocklist: rows holding a listed term (whole words, case-insensitive; any script) go to the quarantine file with
  the term and field that matched.
- Counterfactual augmentation: every kept row that mentions a paired term (``data/debias/term_pairs.csv``: he/she,
  his/her, ...) gets a twin with each term swapped for its partner, both directions at once, preserving case.
- Report: per group pair, how often each group's terms occur before and after, and the balance ratio
  (larger / smaller). Above ``max_balance_ratio`` the stage warns, or fails when ``fail_on_imbalance`` is set.

Sharded (flows/data.py): each shard streams through ``debias_rows`` chunk by chunk (term counts add up); the merge
sums the counts and judges the balance over all shards.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from r1lib.config import DebiasConfig
from r1lib.errors import DataValidationError
from r1lib.io import concat_files, iter_jsonl, write_json
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_options
from r1lib.records import content_key
from r1lib.runs import stage_dir
from r1lib.shards import JsonlWriter, Shard, chunked
from r1lib.stage import StageResult
from r1lib.terms import TermPairs, TermPattern, compile_terms, load_blocklist

log = logging.getLogger(__name__)


class GroupBalance(BaseModel):
    groups: str
    before_a: int
    before_b: int
    after_a: int
    after_b: int
    ratio_before: float
    ratio_after: float


class DebiasedData(StageResult):
    shards: list[Shard]  # the debiased training rows, in shard order
    quarantine: str
    report: str
    rows_in: int
    blocked: int
    counterfactuals: int
    rows_out: int
    balance: list[GroupBalance]

    def summary(self) -> dict:
        return {
            "debias": {
                "blocked": self.blocked,
                "counterfactuals": self.counterfactuals,
                "balance": [b.model_dump() for b in self.balance],
            }
        }

    def summary_lines(self) -> list[tuple[str, str]]:
        balance = ", ".join(f"{b.groups} ratio {b.ratio_before} -> {b.ratio_after}" for b in self.balance)
        return [("debias", f"{self.blocked} blocked, {self.counterfactuals} counterfactuals; {balance}")]


def record_texts(record: dict) -> list[tuple[str, str]]:
    """(field name, text) of everything a record says."""
    texts = [("system", record["system"])] if record["system"] else []
    texts += [(f"messages[{i}]", m["content"]) for i, m in enumerate(record["messages"])]
    if record.get("reasoning"):
        texts.append(("reasoning", record["reasoning"]))
    return texts


def _texts(record: dict) -> list[str]:
    """The texts of record_texts, without their names (the hot loops need only these)."""
    texts = [m["content"] for m in record["messages"]]
    if record["system"]:
        texts.append(record["system"])
    if record.get("reasoning"):
        texts.append(record["reasoning"])
    return texts


def counterfactual(record: dict, pairs: TermPairs) -> dict | None:
    """The swapped twin of a record, or None when it mentions no paired term."""
    if not any(pairs.found(text) for text in _texts(record)):
        return None
    twin = {**record, "messages": [dict(m) for m in record["messages"]], "source": dict(record["source"])}
    twin["system"] = pairs.swap_text(twin["system"])
    for message in twin["messages"]:
        message["content"] = pairs.swap_text(message["content"])
    if twin.get("reasoning"):
        twin["reasoning"] = pairs.swap_text(twin["reasoning"])
    twin.update(origin="counterfactual", parent=record["id"])
    twin["id"] = content_key(twin)[:16]
    return twin


def balance_counts(records: list[dict], pairs: TermPairs) -> Counter:
    counts: Counter = Counter()
    found = pairs.found
    for record in records:
        for text in _texts(record):
            counts.update(found(text))
    return counts


def blocked_row(record: dict, field: str, term: str) -> dict:
    source = record["source"]
    return {
        "file": source["file"],
        "line": source["line"],
        "reason": "blocked_term",
        "field": field,
        "message": f"{source['file']}:{source['line']}: {field} holds blocked term {term!r}",
        "record": record,
    }


def debias_rows(
    records: list[dict], blocklist: TermPattern | None, pairs: TermPairs | None, add_counterfactuals: bool
) -> tuple[list[dict], list[dict], Counter, Counter]:
    """One chunk: (kept + counterfactual rows, blocked rows, term counts before, after). Counts of chunks add up, so
    this streams (bench/data_throughput.py) as well as runs whole."""
    kept, blocked = [], []
    seen: dict[str, str | None] = {}  # text -> blocked term found in it (variants repeat their parent's texts)

    def blocked_term(text: str) -> str | None:
        if text not in seen:
            m = blocklist.search(text)
            seen[text] = m.group(0) if m else None
        return seen[text]

    for record in records:
        if blocklist is None or not any(blocked_term(text) for text in _texts(record)):
            kept.append(record)
            continue
        field, term = next((field, term) for field, text in record_texts(record) if (term := blocked_term(text)))
        blocked.append(blocked_row(record, field, term))
    if pairs is None:
        return kept, blocked, Counter(), Counter()
    before = balance_counts(kept, pairs)
    twins = [twin for record in kept if (twin := counterfactual(record, pairs))] if add_counterfactuals else []
    after = before + balance_counts(twins, pairs)
    return kept + twins, blocked, before, after


def balance_report(pairs: TermPairs, before: Counter, after: Counter) -> list[GroupBalance]:
    balance = []
    for pair in dict.fromkeys(f"{r['group_a']}/{r['group_b']}" for r in pairs.rows):
        b_a, b_b, a_a, a_b = before[(pair, "a")], before[(pair, "b")], after[(pair, "a")], after[(pair, "b")]
        balance.append(
            GroupBalance(
                groups=pair,
                before_a=b_a,
                before_b=b_b,
                after_a=a_a,
                after_b=a_b,
                ratio_before=_ratio(b_a, b_b),
                ratio_after=_ratio(a_a, a_b),
            )
        )
    return balance


def debias(records: list[dict], cfg: DebiasConfig) -> tuple[list[dict], list[dict], list[GroupBalance]]:
    """(kept + counterfactual rows, quarantined rows, balance per group pair)."""
    blocklist, pairs = load_lists(cfg)
    out, blocked, before, after = debias_rows(records, blocklist, pairs, cfg.counterfactual)
    return out, blocked, (balance_report(pairs, before, after) if pairs else [])


def load_lists(cfg: DebiasConfig) -> tuple[TermPattern | None, TermPairs | None]:
    blocklist = compile_terms(load_blocklist(Path(cfg.blocklist_path))) if cfg.blocklist_path else None
    return blocklist, (TermPairs.load(Path(cfg.term_pairs_path)) if cfg.term_pairs_path else None)


def _ratio(a: int, b: int) -> float:
    if a == b:
        return 1.0
    return round(max(a, b) / max(min(a, b), 1), 3)


class DebiasedShard(BaseModel):
    shard: Shard
    quarantine: InputPath
    rows_in: int
    blocked: int
    counterfactuals: int
    before: dict[str, int]  # "pair|side" -> term count, of the kept rows
    after: dict[str, int]  # the same with the counterfactual twins


def debias_shard(shard: Shard, cfg: DebiasConfig, out_prefix: Path) -> DebiasedShard:
    """The map unit: one augmented shard, streamed chunk by chunk (the term counts of chunks add up)."""
    blocklist, pairs = load_lists(cfg) if cfg.enabled else (None, None)
    before: Counter = Counter()
    after: Counter = Counter()
    rows_in = blocked_rows = counterfactuals = 0
    with JsonlWriter(f"{out_prefix}.jsonl") as out, JsonlWriter(f"{out_prefix}.quarantine.jsonl") as quarantine:
        for chunk in chunked(iter_jsonl(Path(shard.path))):
            rows_in += len(chunk)
            if not cfg.enabled:
                out.write_many(chunk)
                continue
            kept, blocked, b, a = debias_rows(chunk, blocklist, pairs, cfg.counterfactual)
            out.write_many(kept)
            quarantine.write_many(blocked)
            before.update(b)
            after.update(a)
            blocked_rows += len(blocked)
            counterfactuals += sum(r["origin"] == "counterfactual" for r in kept)
        key = "|".join
        return DebiasedShard(
            shard=out.close(),
            quarantine=quarantine.close().path,
            rows_in=rows_in,
            blocked=blocked_rows,
            counterfactuals=counterfactuals,
            before={key(k): v for k, v in sorted(before.items())},
            after={key(k): v for k, v in sorted(after.items())},
        )


def merge_debiased(parts: list[DebiasedShard], cfg: DebiasConfig, out_dir: Path) -> DebiasedData:
    """The debiased shards in order (they stay shards: tokenize maps over them), ``quarantine.jsonl``, the balance
    over all shards in ``report.json``; warns, or fails with ``fail_on_imbalance``, when a pair stays unbalanced."""
    out_dir = Path(out_dir)
    quarantine = concat_files(out_dir / "quarantine.jsonl", [p.quarantine for p in parts])
    before: Counter = Counter()
    after: Counter = Counter()
    for part in parts:
        before.update({tuple(k.split("|")): v for k, v in part.before.items()})
        after.update({tuple(k.split("|")): v for k, v in part.after.items()})
    pairs = TermPairs.load(Path(cfg.term_pairs_path)) if cfg.enabled and cfg.term_pairs_path else None
    result = DebiasedData(
        shards=[p.shard for p in parts],
        quarantine=str(quarantine),
        report=str(out_dir / "report.json"),
        rows_in=sum(p.rows_in for p in parts),
        blocked=sum(p.blocked for p in parts),
        counterfactuals=sum(p.counterfactuals for p in parts),
        rows_out=sum(p.shard.rows for p in parts),
        balance=balance_report(pairs, before, after) if pairs else [],
    )
    write_json(Path(result.report), result.model_dump(exclude={"shards", "quarantine", "report"}))
    for group in result.balance:
        if group.ratio_after > cfg.max_balance_ratio:
            message = (
                f"{group.groups} terms stay unbalanced after debiasing: {group.after_a} vs {group.after_b} "
                f"(ratio {group.ratio_after}, limit {cfg.max_balance_ratio})"
            )
            if cfg.fail_on_imbalance:
                raise DataValidationError(message)
            log.warning(message)
    return result


def debias_file(train_path: Path, cfg: DebiasConfig, out_dir: Path) -> DebiasedData:
    """The whole stage in this process on one file of records (the flow maps debias_shard instead)."""
    part = debias_shard(Shard.of(train_path), cfg, Path(out_dir) / "shards" / "train-0000")
    return merge_debiased([part], cfg, out_dir)


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="debias-shard", task_run_name="debias {index}", **stage_options())
def debias_shard_task(shard: Shard, cfg: DebiasConfig, index: int, run_dir: OutputPath) -> DebiasedShard:
    """Quarantine blocklisted rows and add counterfactual twins in one shard."""
    return debias_shard(shard, cfg, stage_dir(run_dir, "debias", "shards", f"train-{index:04d}"))


@task(name="debias", task_run_name="debias merge", **stage_options())
def debias_merge_task(parts: list[DebiasedShard], cfg: DebiasConfig, run_dir: OutputPath) -> DebiasedData:
    """Join the debiased shards; report group balance."""
    result = merge_debiased(parts, cfg, stage_dir(run_dir, "debias"))
    create_table_artifact(
        key="bias-report",
        table=[b.model_dump() for b in result.balance],
        description="Group term counts before/after counterfactual augmentation (ratio = larger/smaller).",
    )
    create_markdown_artifact(
        key="debias-summary",
        markdown=f"**Debias**: {result.rows_in} rows in, {result.blocked} blocked (see `{result.quarantine}`), "
        f"{result.counterfactuals} counterfactual twins added, {result.rows_out} rows out.",
    )
    print(
        f"debiased: {result.blocked} rows blocked, {result.counterfactuals} counterfactuals added; "
        + ", ".join(f"{b.groups} {b.ratio_before} -> {b.ratio_after}" for b in result.balance)
    )
    return result
