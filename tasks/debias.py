"""Stage 3, debias: blocklist filtering, counterfactual augmentation, and a measured bias report.

- Blocklist: rows holding a listed term (whole words, case-insensitive; any script) go to the quarantine file with
  the term and field that matched.
- Counterfactual augmentation: every kept row that mentions a paired term (``data/debias/term_pairs.csv``: he/she,
  his/her, ...) gets a twin with each term swapped for its partner, both directions at once, preserving case.
- Report: per group pair, how often each group's terms occur before and after, and the balance ratio
  (larger / smaller). Above ``max_balance_ratio`` the stage warns, or fails when ``fail_on_imbalance`` is set.
"""

from __future__ import annotations

import copy
import csv
import logging
import re
from collections import Counter
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from tasks.config import DebiasConfig
from tasks.errors import ConfigError, DataValidationError
from tasks.io import read_jsonl, write_json, write_jsonl
from tasks.orchestration import stage_options
from tasks.records import content_key

log = logging.getLogger(__name__)


class GroupBalance(BaseModel):
    groups: str
    before_a: int
    before_b: int
    after_a: int
    after_b: int
    ratio_before: float
    ratio_after: float


class DebiasedData(BaseModel):
    train: str
    quarantine: str
    rows_in: int
    blocked: int
    counterfactuals: int
    rows_out: int
    balance: list[GroupBalance]


def _term_pattern(term: str) -> str:
    escaped = re.escape(term)
    # Scripts written without spaces (CJK) have no word boundaries: match them as substrings.
    if re.search(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]", term):
        return escaped
    return rf"(?<!\w){escaped}(?!\w)"


def compile_terms(terms: list[str]) -> re.Pattern | None:
    if not terms:
        return None
    ordered = sorted(set(terms), key=len, reverse=True)  # longest first: "his" must not shadow "himself"
    return re.compile("|".join(_term_pattern(t) for t in ordered), re.IGNORECASE)


def load_blocklist(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


class TermPairs:
    """Paired terms of two groups; swapping is case-preserving and goes both ways."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.swap: dict[str, str] = {}
        self.group_of: dict[str, tuple[str, str]] = {}  # term -> (pair name, side)
        for row in rows:
            a, b = row["term_a"].lower(), row["term_b"].lower()
            pair = f"{row['group_a']}/{row['group_b']}"
            self.swap.setdefault(a, b)
            self.swap.setdefault(b, a)  # first listed wins for shared terms ("her" -> "his")
            self.group_of[a] = (pair, "a")
            self.group_of[b] = (pair, "b")
        self.pattern = compile_terms(list(self.swap))

    @classmethod
    def load(cls, path: Path) -> "TermPairs":
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        need = {"group_a", "group_b", "term_a", "term_b"}
        if not rows or not need <= set(rows[0]):
            raise ConfigError(f"{path}: needs a header with columns {sorted(need)}")
        return cls(rows)

    @staticmethod
    def _match_case(source: str, target: str) -> str:
        if source.isupper() and len(source) > 1:
            return target.upper()
        if source[:1].isupper():
            return target[:1].upper() + target[1:]
        return target

    def swap_text(self, text: str) -> str:
        return self.pattern.sub(lambda m: self._match_case(m.group(0), self.swap[m.group(0).lower()]), text)

    def count(self, text: str, counts: Counter) -> None:
        for match in self.pattern.finditer(text):
            counts[self.group_of[match.group(0).lower()]] += 1


def record_texts(record: dict) -> list[tuple[str, str]]:
    """(field name, text) of everything a record says."""
    texts = [("system", record["system"])] if record["system"] else []
    texts += [(f"messages[{i}]", m["content"]) for i, m in enumerate(record["messages"])]
    if record.get("reasoning"):
        texts.append(("reasoning", record["reasoning"]))
    return texts


def counterfactual(record: dict, pairs: TermPairs) -> dict | None:
    """The swapped twin of a record, or None when it mentions no paired term."""
    if not any(pairs.pattern.search(text) for _, text in record_texts(record)):
        return None
    twin = copy.deepcopy(record)
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
    for record in records:
        for _, text in record_texts(record):
            pairs.count(text, counts)
    return counts


def debias(records: list[dict], cfg: DebiasConfig) -> tuple[list[dict], list[dict], list[GroupBalance]]:
    """(kept + counterfactual rows, quarantined rows, balance per group pair)."""
    blocklist = compile_terms(load_blocklist(Path(cfg.blocklist_path))) if cfg.blocklist_path else None
    kept, blocked = [], []
    for record in records:
        hit = next(((field, m.group(0)) for field, text in record_texts(record)
                    if blocklist and (m := blocklist.search(text))), None)
        if hit:
            source = record["source"]
            blocked.append({"file": source["file"], "line": source["line"], "reason": "blocked_term", "field": hit[0],
                            "message": f"{source['file']}:{source['line']}: {hit[0]} holds blocked term {hit[1]!r}",
                            "record": record})
        else:
            kept.append(record)
    if not cfg.term_pairs_path:
        return kept, blocked, []
    pairs = TermPairs.load(Path(cfg.term_pairs_path))
    before = balance_counts(kept, pairs)
    out = list(kept)
    if cfg.counterfactual:
        out += [twin for record in kept if (twin := counterfactual(record, pairs))]
    after = balance_counts(out, pairs)
    balance = []
    for pair in dict.fromkeys(f"{r['group_a']}/{r['group_b']}" for r in pairs.rows):
        b_a, b_b, a_a, a_b = before[(pair, "a")], before[(pair, "b")], after[(pair, "a")], after[(pair, "b")]
        balance.append(GroupBalance(groups=pair, before_a=b_a, before_b=b_b, after_a=a_a, after_b=a_b,
                                    ratio_before=_ratio(b_a, b_b), ratio_after=_ratio(a_a, a_b)))
    return out, blocked, balance


def _ratio(a: int, b: int) -> float:
    if a == b:
        return 1.0
    return round(max(a, b) / max(min(a, b), 1), 3)


def debias_file(train_path: Path, cfg: DebiasConfig, out_dir: Path) -> DebiasedData:
    records = read_jsonl(train_path)
    out_dir = Path(out_dir)
    if not cfg.enabled:
        rows, blocked, balance = records, [], []
    else:
        rows, blocked, balance = debias(records, cfg)
    train = out_dir / "train.jsonl"
    quarantine = out_dir / "quarantine.jsonl"
    write_jsonl(train, rows)
    write_jsonl(quarantine, blocked)
    result = DebiasedData(train=str(train), quarantine=str(quarantine), rows_in=len(records), blocked=len(blocked),
                          counterfactuals=sum(r["origin"] == "counterfactual" for r in rows), rows_out=len(rows),
                          balance=balance)
    write_json(out_dir / "report.json", result.model_dump())
    for group in balance:
        if group.ratio_after > cfg.max_balance_ratio:
            message = (f"{group.groups} terms stay unbalanced after debiasing: {group.after_a} vs {group.after_b} "
                       f"(ratio {group.ratio_after}, limit {cfg.max_balance_ratio})")
            if cfg.fail_on_imbalance:
                raise DataValidationError(message)
            log.warning(message)
    return result


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="debias", **stage_options())
def debias_task(train_path: str, cfg: DebiasConfig, run_dir: str) -> DebiasedData:
    """Quarantine blocklisted rows, add counterfactual twins, report group balance."""
    result = debias_file(Path(train_path), cfg, Path(run_dir) / "debias")
    create_table_artifact(key="bias-report", table=[b.model_dump() for b in result.balance],
                          description="Group term counts before/after counterfactual augmentation (ratio = larger/smaller).")
    create_markdown_artifact(
        key="debias-summary",
        markdown=f"**Debias**: {result.rows_in} rows in, {result.blocked} blocked (see `{result.quarantine}`), "
                 f"{result.counterfactuals} counterfactual twins added, {result.rows_out} rows out.",
    )
    print(f"debiased: {result.blocked} rows blocked, {result.counterfactuals} counterfactuals added; "
          + ", ".join(f"{b.groups} {b.ratio_before} -> {b.ratio_after}" for b in result.balance))
    return result
