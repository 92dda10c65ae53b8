"""Stage 3, debias: blocklist filtering, a measured group-balance report, and (only when switched on) counterfactual
augmentation that never rewrites facts.

- Blocklist: rows holding a listed term (whole words, case-insensitive; any script) go to the quarantine file with
  the term and field that matched. Past ``max_blocked_fraction`` of the rows the stage fails.
- Report: per group pair (``data/debias/term_pairs.csv``: he/she, his/her, ...), how often each group's terms occur,
  as whole words (Chinese segmented by jieba), and the balance ratio (larger / smaller). Above ``max_balance_ratio``
  the stage warns, or fails when ``fail_on_imbalance`` is set. By default this is all: no text is rewritten.
- Counterfactual augmentation (``counterfactual``, off by default): a kept row that mentions a paired term gets a
  twin with the terms swapped, under r1lib/data/counterfactual.py's rules (names, titles, quotes, code, formulas,
  protected phrases and symbols untouched; rows about a named person, or whose reasoning would need rewriting,
  get no twin, counted by reason). A sample of original/twin pairs goes to ``counterfactual_pairs.jsonl`` for review.

Sharded (flows/data.py): each shard streams through ``debias_rows`` chunk by chunk (term counts add up); the merge
sums the counts and judges the balance and the blocked share over all shards.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from dataclasses import field as default
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from r1lib.config import DebiasConfig
from r1lib.data.counterfactual import Counterfactual, changes
from r1lib.data.preference import is_preference, preference_texts
from r1lib.data.records import location
from r1lib.data.shards import JsonlWriter, Shard, chunked
from r1lib.data.terms import TermPairs, TermPattern, compile_terms, load_blocklist
from r1lib.errors import DataValidationError
from r1lib.io import concat_files, iter_jsonl, write_json, write_jsonl
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult
from r1lib.stages import FilterContext

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
    counterfactual: bool = False  # whether twins were made (debias.counterfactual)
    no_twin: dict[str, int] = {}  # rows with a paired term that got no twin, by reason (r1lib/data/counterfactual.py)
    pairs: str | None = None  # counterfactual_pairs.jsonl: sampled original/twin pairs for review

    def summary(self) -> dict:
        return {
            "debias": {
                "rows_in": self.rows_in,
                "blocked": self.blocked,
                "quarantine": self.quarantine,
                "counterfactual": self.counterfactual,
                "counterfactuals": self.counterfactuals,
                "no_twin": self.no_twin,
                "pairs": self.pairs,
                "balance": [b.model_dump() for b in self.balance],
            }
        }

    def summary_lines(self) -> list[tuple[str, str]]:
        if self.counterfactual:
            balance = ", ".join(f"{b.groups} ratio {b.ratio_before} -> {b.ratio_after}" for b in self.balance)
            twins = f"{self.counterfactuals} counterfactual twins (none for {self.no_twin or 0}; pairs {self.pairs})"
        else:
            balance = ", ".join(f"{b.groups} ratio {b.ratio_before} ({b.before_a}:{b.before_b})" for b in self.balance)
            twins = "measured only (debias.counterfactual off)"
        return [("debias", f"{self.blocked} of {self.rows_in} rows blocked; {twins}; {balance}")]


def record_texts(record: dict) -> list[tuple[str, str]]:
    """(field name, text) of everything a record says."""
    texts = [("system", record["system"])] if record["system"] else []
    texts += [(f"messages[{i}]", m["content"]) for i, m in enumerate(record["messages"])]
    if record.get("reasoning"):
        texts.append(("reasoning", record["reasoning"]))
    return texts + preference_texts(record)


def _texts(record: dict) -> list[str]:
    """The texts of record_texts, without their names (the hot loops need only these)."""
    texts = [m["content"] for m in record["messages"]]
    if record["system"]:
        texts.append(record["system"])
    if record.get("reasoning"):
        texts.append(record["reasoning"])
    return texts + [text for _, text in preference_texts(record)]


def counterfactual(record: dict, pairs: TermPairs) -> dict | None:
    """The twin of a record under the default rules (r1lib/data/counterfactual.py), or None when it gets none."""
    return Counterfactual(pairs).twin(record)[0]


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
        "message": f"{location(source['file'], source['line'])}: {field} holds blocked term {term!r}",
        "record": record,
    }


@dataclass
class DebiasedChunk:
    """What debias_rows makes of a chunk; the counts of chunks add up."""

    rows: list[dict]  # kept rows, then their twins
    blocked: list[dict]
    before: Counter  # (pair, side) -> term count of the kept rows
    after: Counter  # the same with the twins
    no_twin: Counter = default(default_factory=Counter)  # reason -> rows with a paired term that got no twin
    pairs: list[dict] = default(default_factory=list)  # {"parent", "twin", "source", "changes"} of each twin


def debias_rows(
    records: list[dict],
    blocklist: TermPattern | None,
    pairs: TermPairs | None,
    swapper: Counterfactual | bool | None = None,
) -> tuple[list[dict], list[dict], Counter, Counter]:
    """One chunk: (kept + counterfactual rows, blocked rows, term counts before, after). ``swapper``: the
    Counterfactual rules to make twins with (True: the defaults), or None/False for no twins."""
    chunk = debias_chunk(records, blocklist, pairs, swapper)
    return chunk.rows, chunk.blocked, chunk.before, chunk.after


def debias_chunk(
    records: list[dict], blocklist: TermPattern | None, pairs: TermPairs | None, swapper: Counterfactual | bool | None
) -> DebiasedChunk:
    """debias_rows with the twins' bookkeeping: the reasons rows got no twin and the changes of each twin."""
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
        return DebiasedChunk(rows=kept, blocked=blocked, before=Counter(), after=Counter())
    if swapper is True:
        swapper = Counterfactual(pairs)
    before = balance_counts(kept, pairs)
    twins, no_twin, sample = [], Counter(), []
    for record in kept if swapper else []:
        if is_preference(record):  # a twin would need both answers swapped alike: left to the data's author
            no_twin["preference_row"] += 1
            continue
        twin, why = swapper.twin(record)
        if twin is None:
            no_twin.update([why] if why else [])
            continue
        twins.append(twin)
        sample.append(
            {"parent": record["id"], "twin": twin["id"], "source": record["source"], "changes": changes(record, twin)}
        )
    after = before + balance_counts(twins, pairs)
    return DebiasedChunk(rows=kept + twins, blocked=blocked, before=before, after=after, no_twin=no_twin, pairs=sample)


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
    blocklist, pairs, swapper = load_lists(cfg)
    out, blocked, before, after = debias_rows(records, blocklist, pairs, swapper)
    return out, blocked, (balance_report(pairs, before, after) if pairs else [])


def load_lists(cfg: DebiasConfig) -> tuple[TermPattern | None, TermPairs | None, Counterfactual | None]:
    """The blocklist, the term pairs and, with ``cfg.counterfactual``, the twin rules with the protected phrases."""
    blocklist = compile_terms(load_blocklist(Path(cfg.blocklist_path))) if cfg.blocklist_path else None
    pairs = TermPairs.load(Path(cfg.term_pairs_path)) if cfg.term_pairs_path else None
    if not (cfg.counterfactual and pairs):
        return blocklist, pairs, None
    protected = load_blocklist(Path(cfg.protected_phrases_path)) if cfg.protected_phrases_path else []
    return blocklist, pairs, Counterfactual(pairs, protected, cfg.swap_reasoning)


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
    no_twin: dict[str, int] = {}
    pairs: InputPath | None = None  # this shard's first sample_pairs original/twin pairs (jsonl)


def debias_shard(shard: Shard, cfg: DebiasConfig, out_prefix: Path) -> DebiasedShard:
    """The map unit: one augmented shard, streamed chunk by chunk (the term counts of chunks add up)."""
    blocklist, pairs, swapper = load_lists(cfg) if cfg.enabled else (None, None, None)
    before: Counter = Counter()
    after: Counter = Counter()
    no_twin: Counter = Counter()
    sample: list[dict] = []
    rows_in = blocked_rows = counterfactuals = 0
    with JsonlWriter(f"{out_prefix}.jsonl") as out, JsonlWriter(f"{out_prefix}.quarantine.jsonl") as quarantine:
        for records in chunked(iter_jsonl(Path(shard.path))):
            rows_in += len(records)
            if not cfg.enabled:
                out.write_many(records)
                continue
            chunk = debias_chunk(records, blocklist, pairs, swapper)
            out.write_many(chunk.rows)
            quarantine.write_many(chunk.blocked)
            before.update(chunk.before)
            after.update(chunk.after)
            no_twin.update(chunk.no_twin)
            sample += chunk.pairs[: cfg.sample_pairs - len(sample)]
            blocked_rows += len(chunk.blocked)
            counterfactuals += sum(r["origin"] == "counterfactual" for r in chunk.rows)
        pairs_path = None
        if swapper is not None:
            pairs_path = Path(f"{out_prefix}.pairs.jsonl")
            write_jsonl(pairs_path, sample)
        key = "|".join
        return DebiasedShard(
            shard=out.close(),
            quarantine=quarantine.close().path,
            rows_in=rows_in,
            blocked=blocked_rows,
            counterfactuals=counterfactuals,
            before={key(k): v for k, v in sorted(before.items())},
            after={key(k): v for k, v in sorted(after.items())},
            no_twin=dict(sorted(no_twin.items())),
            pairs=str(pairs_path) if pairs_path else None,
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
    no_twin: Counter = Counter()
    for part in parts:
        no_twin.update(part.no_twin)
    sample_path = None
    if any(p.pairs for p in parts):  # the first sample_pairs pairs over the shards, in shard order
        sample = [row for p in parts if p.pairs for row in iter_jsonl(Path(p.pairs))][: cfg.sample_pairs]
        sample_path = str(out_dir / "counterfactual_pairs.jsonl")
        write_jsonl(Path(sample_path), sample)
    result = DebiasedData(
        shards=[p.shard for p in parts],
        quarantine=str(quarantine),
        report=str(out_dir / "report.json"),
        rows_in=sum(p.rows_in for p in parts),
        blocked=sum(p.blocked for p in parts),
        counterfactuals=sum(p.counterfactuals for p in parts),
        rows_out=sum(p.shard.rows for p in parts),
        balance=balance_report(pairs, before, after) if pairs else [],
        counterfactual=cfg.enabled and cfg.counterfactual,
        no_twin=dict(sorted(no_twin.items())),
        pairs=sample_path,
    )
    write_json(Path(result.report), result.model_dump(exclude={"shards", "quarantine", "report"}))
    if result.rows_in and result.blocked / result.rows_in > cfg.max_blocked_fraction:
        raise DataValidationError(
            f"debias blocked {result.blocked} of {result.rows_in} training rows ({result.blocked / result.rows_in:.0%},"
            f" over debias.max_blocked_fraction={cfg.max_blocked_fraction:g}) for terms of debias.blocklist_path "
            f"({cfg.blocklist_path}); each is in {quarantine} with the term and field. Clean the data, edit the "
            "blocklist, or raise debias.max_blocked_fraction"
        )
    for group in result.balance:
        if group.ratio_after > cfg.max_balance_ratio:
            if not cfg.counterfactual:  # measured only, as asked: a finding for the report, not a fault of the run
                message = (
                    f"{group.groups} terms unbalanced: {group.after_a} vs {group.after_b} (ratio {group.ratio_after}, "
                    f"over debias.max_balance_ratio {cfg.max_balance_ratio}); measured only: debias.counterfactual "
                    "adds swapped twins, debias.fail_on_imbalance refuses the data"
                )
            else:
                message = (
                    f"{group.groups} terms stay unbalanced after debiasing: {group.after_a} vs {group.after_b} "
                    f"(ratio {group.ratio_after}, limit {cfg.max_balance_ratio})"
                )
            if cfg.fail_on_imbalance:
                raise DataValidationError(message)
            log.log(logging.WARNING if cfg.counterfactual else logging.INFO, message)
    return result


def debias_file(train_path: Path, cfg: DebiasConfig, out_dir: Path) -> DebiasedData:
    """The whole stage in this process on one file of records (the flow maps debias_shard instead)."""
    part = debias_shard(Shard.of(train_path), cfg, Path(out_dir) / "shards" / "train-0000")
    return merge_debiased([part], cfg, out_dir)


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="debias-shard", task_run_name="debias {index}", **stage_options())
def debias_shard_task(
    shard: Shard, index: int, cfg: DebiasConfig, context: FilterContext, out_dir: OutputPath
) -> DebiasedShard:
    """Quarantine blocklisted rows and add counterfactual twins in one shard."""
    return debias_shard(shard, cfg, Path(out_dir, "shards", f"train-{index:04d}"))


@task(name="debias", task_run_name="debias merge", **stage_options())
def debias_merge_task(parts: list[DebiasedShard], cfg: DebiasConfig, out_dir: OutputPath) -> DebiasedData:
    """Join the debiased shards; report group balance."""
    result = merge_debiased(parts, cfg, Path(out_dir))
    create_table_artifact(
        key="bias-report",
        table=[b.model_dump() for b in result.balance],
        description="Group term counts (whole words) before/after counterfactual twins (ratio = larger/smaller).",
    )
    twins = (
        f"{result.counterfactuals} counterfactual twins added (no twin: {result.no_twin}; review the sampled pairs in "
        f"`{result.pairs}`)"
        if result.counterfactual
        else "counterfactual augmentation off: balance measured, no text rewritten"
    )
    create_markdown_artifact(
        key="debias-summary",
        markdown=f"**Debias**: {result.rows_in} rows in, {result.blocked} blocked (see `{result.quarantine}`), "
        f"{twins}, {result.rows_out} rows out.",
    )
    print(result.summary_lines()[0][1])
    return result
