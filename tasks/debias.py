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

import csv
import functools
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel

from r1lib.config import DebiasConfig
from r1lib.errors import ConfigError, DataValidationError
from r1lib.io import concat_files, iter_jsonl, write_json
from r1lib.policy import stage_options
from r1lib.records import content_key
from r1lib.paths import InputPath, OutputPath
from r1lib.runs import stage_dir
from r1lib.shards import JsonlWriter, Shard, chunked
from r1lib.stage import StageResult

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
        return {"debias": {"blocked": self.blocked, "counterfactuals": self.counterfactuals,
                           "balance": [b.model_dump() for b in self.balance]}}

    def summary_lines(self) -> list[tuple[str, str]]:
        balance = ", ".join(f"{b.groups} ratio {b.ratio_before} -> {b.ratio_after}" for b in self.balance)
        return [("debias", f"{self.blocked} blocked, {self.counterfactuals} counterfactuals; {balance}")]


_CJK_TERM_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


_WORD_RE = re.compile(r"\w+")


@functools.lru_cache(maxsize=1 << 14)
def _lower_words(text: str) -> tuple[str, ...]:
    """The words of an ASCII text in lower case; cached because the blocklist and the term pairs both ask."""
    return tuple(_WORD_RE.findall(text.lower()))
_ASCII_WORD_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


class TermPattern:
    r"""A compiled term pattern (``search``/``finditer``/``sub`` as on ``re.Pattern``) that answers an ASCII text
    holding no term by a set lookup of its words instead of a scan: the alternation of every term is tried at every
    position, ~10x slower on long reasoning, and most texts hold no term.

    The shortcut is exact: in ASCII text a case-insensitive whole-word match of an ASCII word term is a ``\w+`` run
    equal to it in lower case, and a term with a character that matches no ASCII character even ignoring case (é,
    白; unlike ſ or the Kelvin sign) never matches ASCII text. Any other term (one like "e.g.") turns it off."""

    def __init__(self, terms: list[str]):
        ordered = sorted(set(terms), key=len, reverse=True)  # longest first: "his" must not shadow "himself"
        words = [re.escape(t) for t in ordered if not _CJK_TERM_RE.search(t)]
        cjk = [re.escape(t) for t in ordered if _CJK_TERM_RE.search(t)]
        # The word terms share one boundary check around a single alternation (6x faster than one per term).
        parts = ([rf"(?<!\w)(?:{'|'.join(words)})(?!\w)"] if words else []) + cjk
        self.pattern = re.compile("|".join(parts), re.IGNORECASE)
        ascii_words: set[str] | None = set()
        for term in ordered:
            if term.isascii() and re.fullmatch(r"\w+", term):
                ascii_words.add(term.lower())
            elif not any(not c.isascii() and not any(re.fullmatch(re.escape(c), a, re.IGNORECASE)
                                                      for a in _ASCII_WORD_CHARS) for c in term):
                ascii_words = None  # a term that could match ASCII text in a way the word set does not see
                break
        self._ascii_words = frozenset(ascii_words) if ascii_words is not None else None

    def words_found(self, text: str) -> list[str] | None:
        """The terms in ``text``, lower case, in order, when the word-set shortcut applies to it; else None."""
        if self._ascii_words is None or not text.isascii():
            return None
        words = _lower_words(text)
        return [] if self._ascii_words.isdisjoint(words) else [w for w in words if w in self._ascii_words]

    def absent(self, text: str) -> bool:
        """True when ``text`` surely holds no term."""
        return self._ascii_words is not None and text.isascii() and self._ascii_words.isdisjoint(_lower_words(text))

    def search(self, text: str) -> re.Match | None:
        return None if self.absent(text) else self.pattern.search(text)

    def finditer(self, text: str) -> Iterator[re.Match]:
        return iter(()) if self.absent(text) else self.pattern.finditer(text)

    def sub(self, repl, text: str) -> str:
        return text if self.absent(text) else self.pattern.sub(repl, text)


def compile_terms(terms: list[str]) -> TermPattern | None:
    r"""One case-insensitive pattern for all terms: whole words (``(?<!\w)term(?!\w)``), CJK terms as substrings."""
    return TermPattern(terms) if terms else None


def load_blocklist(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]


_NEXT_WORD_RE = re.compile(r"[ \t]*(\w+)?")
_SLASH_AFTER_RE = re.compile(r"\s*/\s*(\w+)")
_SLASH_BEFORE_RE = re.compile(r"(\w+)\s*/\s*$")
# Words after which "her" is an object ("him"), not a possessive ("his").
_AFTER_OBJECT = {"and", "or", "but", "to", "with", "at", "in", "on", "for", "from", "that", "then", "again", "too",
                 "the", "a", "an", "about", "as", "by", "so", "if", "when", "because", "yesterday", "today", "now",
                 "here", "there", "up", "down", "out", "off", "back", "away", "into", "of", "is", "was", "not"}


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
        # Augmented variants repeat their parent's texts (reasoning, answer): each distinct text is scanned once.
        self._swapped: dict[str, str] = {}
        self._found: dict[str, tuple] = {}

    @classmethod
    def load(cls, path: Path) -> "TermPairs":
        with open(path, encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        need = {"group_a", "group_b", "term_a", "term_b"}
        if not rows or not need <= set(rows[0]):
            raise ConfigError(f"{path}: needs a header with columns {sorted(need)}")
        return cls(rows)

    def term(self, matched: str) -> str:
        """The listed term a match stands for: its lower case, or, where case-insensitive matching went beyond
        lower() ("ſhe" matches "she"), the term it matches."""
        lower = matched.lower()
        if lower in self.swap:
            return lower
        return next(t for t in self.swap if re.fullmatch(re.escape(t), matched, re.IGNORECASE))

    @staticmethod
    def _match_case(source: str, target: str) -> str:
        if source.isupper() and len(source) > 1:
            return target.upper()
        if source[:1].isupper():
            return target[:1].upper() + target[1:]
        return target

    def _partner(self, match: re.Match) -> str:
        term = self.term(match.group(0))
        target = self.swap[term]
        # English "her" is both "his" (her book) and "him" (saw her, gave her the book): the next word decides.
        if term == "her" and {"his", "him"} <= set(self.swap):
            # "his/her", "her/him": the slash pairs it with the form it must become
            beside = _SLASH_AFTER_RE.match(match.string, match.end()) or _SLASH_BEFORE_RE.search(match.string[max(0, match.start() - 40): match.start()])
            if beside and beside.group(1).lower() in ("his", "him"):
                return beside.group(1).lower()
            following = _NEXT_WORD_RE.match(match.string, match.end())
            nxt = following.group(1).lower() if following and following.group(1) else ""
            target = "him" if not nxt or nxt in _AFTER_OBJECT else "his"
        return target

    def swap_text(self, text: str) -> str:
        """Every paired term swapped for its partner at once (so "his/her" -> "her/his"), case kept ("HE" -> "SHE",
        "He's" -> "She's"); whole words only, except in CJK where terms are substrings."""
        out = self._swapped.get(text)
        if out is None:
            if len(self._swapped) > 200_000:
                self._swapped.clear()
            out = self._swapped[text] = self.pattern.sub(lambda m: self._match_case(m.group(0), self._partner(m)), text)
        return out

    def found(self, text: str) -> tuple:
        """The (pair, side) of every paired term in ``text``, in order (cached per distinct text)."""
        out = self._found.get(text)
        if out is None:
            if len(self._found) > 200_000:
                self._found.clear()
            words = self.pattern.words_found(text)
            if words is None:
                words = [self.term(m.group(0)) for m in self.pattern.finditer(text)]
            out = self._found[text] = tuple(self.group_of[w] for w in words)
        return out


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
    return {"file": source["file"], "line": source["line"], "reason": "blocked_term", "field": field,
            "message": f"{source['file']}:{source['line']}: {field} holds blocked term {term!r}", "record": record}


def debias_rows(records: list[dict], blocklist: TermPattern | None, pairs: TermPairs | None, add_counterfactuals: bool
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
        balance.append(GroupBalance(groups=pair, before_a=b_a, before_b=b_b, after_a=a_a, after_b=a_b,
                                    ratio_before=_ratio(b_a, b_b), ratio_after=_ratio(a_a, a_b)))
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
        return DebiasedShard(shard=out.close(), quarantine=quarantine.close().path, rows_in=rows_in,
                             blocked=blocked_rows, counterfactuals=counterfactuals,
                             before={key(k): v for k, v in sorted(before.items())},
                             after={key(k): v for k, v in sorted(after.items())})


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
    result = DebiasedData(shards=[p.shard for p in parts], quarantine=str(quarantine), report=str(out_dir / "report.json"),
                          rows_in=sum(p.rows_in for p in parts), blocked=sum(p.blocked for p in parts),
                          counterfactuals=sum(p.counterfactuals for p in parts),
                          rows_out=sum(p.shard.rows for p in parts),
                          balance=balance_report(pairs, before, after) if pairs else [])
    write_json(Path(result.report), result.model_dump(exclude={"shards", "quarantine", "report"}))
    for group in result.balance:
        if group.ratio_after > cfg.max_balance_ratio:
            message = (f"{group.groups} terms stay unbalanced after debiasing: {group.after_a} vs {group.after_b} "
                       f"(ratio {group.ratio_after}, limit {cfg.max_balance_ratio})")
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


@task(name="debias", **stage_options())
def debias_merge_task(parts: list[DebiasedShard], cfg: DebiasConfig, run_dir: OutputPath) -> DebiasedData:
    """Join the debiased shards; report group balance."""
    result = merge_debiased(parts, cfg, stage_dir(run_dir, "debias"))
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
