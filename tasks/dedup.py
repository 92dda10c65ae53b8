"""Stage 1b, dedup: exact and near-duplicate removal, train/test leakage, and a stable split when no test file exists.

Runs right after validate, on its records (``ValidatedData``) and returns a ``ValidatedData`` of the same shape whose
train/test point at the cleaned files, so every later stage is unchanged.

- Exact duplicates: the conversation (system + every turn, reasoning left out) is normalized (NFKC, case-folded,
  whitespace collapsed) and hashed; the first row of each hash is kept, the others go to quarantine as ``duplicate``.
- Near duplicates: MinHash signatures (datasketch's ``affine32`` scheme over word n-gram shingles; CJK characters
  count as words) and LSH banding with the (bands, rows) that datasketch's ``MinHashLSH`` would choose for
  ``dedup.threshold``; candidate pairs are verified by their estimated Jaccard similarity. A row whose similarity to
  an earlier kept row reaches the threshold is quarantined as ``near_duplicate``. Signatures and banding are computed
  with numpy over whole batches (the hashes are identical to ``datasketch.MinHash(scheme="affine32")`` fed the same
  shingle hashes; tests/test_data_dedup.py checks that), which is what makes a million rows take seconds.
- Leakage: a train row whose prompt (system + user turns) equals a test prompt after normalization, or whose
  conversation is near-identical to a test row's, is removed from train and quarantined as ``test_leak`` (the test
  set is never touched by leakage removal: it is what we measure on).
- Split: with ``dedup.split_test_fraction`` > 0 and no test rows (``data.test_path`` = ""), a row goes to test when
  the hash of its normalized prompt (salted with ``split_salt``) falls below the fraction. The decision depends on
  that row alone, so adding rows never moves an old test item into train.

Every dropped row is written to ``runs/<run>/dedup/quarantine.jsonl`` with file, line, reason and the row it
duplicates (``duplicate_of``); counts are in ``report.json`` and a Prefect table artifact.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import numpy as np
from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.config import DedupConfig
from tasks.errors import DataValidationError
from tasks.io import read_jsonl, write_json, write_jsonl
from tasks.orchestration import stage_options

_WS_RE = re.compile(r"\s+")
# A word is a run of word characters, except that CJK characters (written without spaces) are one word each.
_WORD_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+")
_M32 = np.uint64(0xFFFFFFFF)


class DedupReport(BaseModel):
    train_in: int
    test_in: int
    train_out: int
    test_out: int
    split_to_test: int
    reasons: dict[str, int]
    threshold: float
    num_perm: int
    bands: int
    rows_per_band: int


# --- text keys ----------------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """What counts as "the same text": NFKC, case-folded, whitespace collapsed."""
    return _WS_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def conversation_text(record: dict) -> str:
    parts = [record["system"]] if record.get("system") else []
    return "\n".join(parts + [m["content"] for m in record["messages"]])


def prompt_text(record: dict) -> str:
    parts = [record["system"]] if record.get("system") else []
    return "\n".join(parts + [m["content"] for m in record["messages"] if m["role"] == "user"])


def hash64(text: str, salt: str = "") -> int:
    """A stable 64-bit hash (the same in every process and on every machine, unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\x1f{text}".encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little")


def exact_key(record: dict) -> int:
    return hash64(normalize_text(conversation_text(record)))


def prompt_key(record: dict) -> int:
    return hash64(normalize_text(prompt_text(record)))


def is_test_item(record: dict, fraction: float, salt: str) -> bool:
    """The stable split: depends only on this row's normalized prompt, never on the other rows."""
    return fraction > 0 and hash64(normalize_text(prompt_text(record)), salt) < fraction * 2**64


# --- MinHash (datasketch affine32 scheme, vectorized over batches) -------------------------------------------------


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimizing false positives + negatives, as datasketch.MinHashLSH chooses them."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


class MinHasher:
    """MinHash signatures of many texts at once: word n-gram shingles -> uint32 hashes -> ``num_perm`` minima."""

    def __init__(self, num_perm: int = 64, ngram: int = 3, seed: int = 1):
        from datasketch import MinHash
        from datasketch.minhash import _fmix

        self.num_perm, self.ngram = num_perm, ngram
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a, self.b = np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)
        self._fmix = _fmix
        self._token_hash: dict[str, int] = {}

    def _tokens(self, text: str) -> list[int]:
        cache = self._token_hash
        out = []
        for word in _WORD_RE.findall(text):
            h = cache.get(word)
            if h is None:
                if len(cache) > 2_000_000:
                    cache.clear()
                h = cache[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"),
                                                                 digest_size=4).digest(), "little")
            out.append(h)
        return out

    def shingle_hashes(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 hash of every shingle of every text, the text index of each). A text shorter than ``ngram`` words is
        one shingle; an empty one gets a single fixed shingle."""
        n = self.ngram
        tokens = []
        for text in texts:
            t = self._tokens(normalize_text(text)) or [0]
            if len(t) < n:
                t = t + [0] * (n - len(t))
            tokens.append(t)
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        flat = np.fromiter((h for t in tokens for h in t), dtype=np.uint64, count=int(lengths.sum()))
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        # n-gram hash: a polynomial combination of the n word hashes (64-bit, wrapping), folded to 32 bits.
        total = len(flat)
        g = flat[: total - n + 1].copy()
        for k in range(1, n):
            g = g * np.uint64(0x9E3779B97F4A7C15) + flat[k: total - n + 1 + k]
        g = ((g ^ (g >> np.uint64(32))) & _M32).astype(np.uint32)
        # keep only n-grams that lie inside one text (they start at most len - n words into it)
        text_of = np.repeat(np.arange(len(tokens), dtype=np.int64), lengths)[: total - n + 1]
        offset = np.arange(total - n + 1, dtype=np.int64) - starts[text_of]
        valid = offset <= (lengths - n)[text_of]
        owners = text_of[valid]
        return g[valid], owners

    def signatures_of_hashes(self, hashes: np.ndarray, owners: np.ndarray, n_texts: int) -> np.ndarray:
        """(n_texts, num_perm) uint32 signatures, exactly datasketch's affine32 MinHash of these shingle hashes."""
        sig = np.full((n_texts, self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        if not len(hashes):
            return sig
        hv = self._fmix(hashes.astype(np.uint32), 32)
        # rows are grouped by owner (shingle_hashes emits them in order): minimum per owner with reduceat
        bounds = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        step = max(1, (1 << 22) // self.num_perm)  # bound the temporary (shingles x perms) matrix to ~16 MiB
        for lo in range(0, len(bounds), step):
            b_lo = bounds[lo]
            b_hi = bounds[lo + step] if lo + step < len(bounds) else len(hv)
            block = hv[b_lo:b_hi, None] * self.a[None, :] + self.b[None, :]
            sig[owners[bounds[lo: lo + step]]] = np.minimum.reduceat(block, bounds[lo: lo + step] - b_lo, axis=0)
        return sig

    def signatures(self, texts: list[str]) -> np.ndarray:
        hashes, owners = self.shingle_hashes(texts)
        return self.signatures_of_hashes(hashes, owners, len(texts))


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: one hash per band of each signature."""
    n = len(sig)
    out = np.zeros((n, bands), dtype=np.uint64)
    for b in range(bands):
        h = np.full(n, 0xCBF29CE484222325, dtype=np.uint64)
        for r in range(rows):
            h = (h ^ sig[:, b * rows + r].astype(np.uint64)) * np.uint64(0x100000001B3)
        out[:, b] = h ^ np.uint64(b)
    return out


def candidate_pairs(keys: np.ndarray) -> np.ndarray:
    """(i, j) pairs, i < j, that share at least one band: within each bucket every member is paired with the bucket's
    first member and with its predecessor (enough to find every member of a tight cluster)."""
    pairs = []
    n = len(keys)
    idx = np.arange(n)
    for b in range(keys.shape[1]):
        order = np.lexsort((idx, keys[:, b]))
        k = keys[order, b]
        same = np.flatnonzero(k[1:] == k[:-1]) + 1  # positions whose predecessor is in the same bucket
        if not len(same):
            continue
        starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
        first = starts[np.searchsorted(starts, same, side="right") - 1]
        pairs.append(np.stack([order[same - 1], order[same]], axis=1))
        pairs.append(np.stack([order[first], order[same]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    p = np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0)
    return p[p[:, 0] != p[:, 1]]


def similarity(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of row-aligned signatures."""
    return (sig_a == sig_b).mean(axis=1)


# --- the plan: which rows go ---------------------------------------------------------------------------------------


def find_duplicates(keys: np.ndarray, sig: np.ndarray | None, threshold: float, bands: int, rows: int) -> dict[int, tuple[str, int]]:
    """Row index -> (reason, index of the kept row it repeats). The first of each exact group is kept; a row is a near
    duplicate when it is similar enough to an earlier row that is kept."""
    drop: dict[int, tuple[str, int]] = {}
    keys = np.asarray(keys, dtype=np.uint64)
    order = np.lexsort((np.arange(len(keys)), keys))
    k = keys[order]
    same = np.flatnonzero(k[1:] == k[:-1]) + 1
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, dtype=np.int64)
    if len(same):
        first = order[starts[np.searchsorted(starts, same, side="right") - 1]]
        for i, f in zip(order[same].tolist(), first.tolist()):
            drop[i] = ("duplicate", f)
    if sig is None or len(sig) < 2:
        return drop
    alive = np.ones(len(keys), dtype=bool)
    alive[list(drop)] = False
    live = np.flatnonzero(alive)
    pairs = candidate_pairs(band_keys(sig[live], bands, rows))
    if not len(pairs):
        return drop
    pairs = live[pairs]
    pairs = pairs[similarity(sig[pairs[:, 0]], sig[pairs[:, 1]]) >= threshold]
    for i, j in sorted(map(tuple, pairs.tolist()), key=lambda p: (p[1], p[0])):
        if i not in drop and j not in drop:
            drop[j] = ("near_duplicate", i)
    return drop


def find_leaks(train_prompt_keys: np.ndarray, train_sig: np.ndarray | None, test_prompt_keys: np.ndarray,
               test_sig: np.ndarray | None, threshold: float, bands: int, rows: int) -> dict[int, int]:
    """Train row index -> index of the test row it leaks (same normalized prompt, or near-identical conversation)."""
    leaks: dict[int, int] = {}
    test_of = {}
    for j, key in enumerate(np.asarray(test_prompt_keys, dtype=np.uint64).tolist()):
        test_of.setdefault(key, j)
    for i, key in enumerate(np.asarray(train_prompt_keys, dtype=np.uint64).tolist()):
        if key in test_of:
            leaks[i] = test_of[key]
    if train_sig is None or test_sig is None or not len(train_sig) or not len(test_sig):
        return leaks
    n = len(train_sig)
    pairs = candidate_pairs(band_keys(np.concatenate([train_sig, test_sig]), bands, rows))
    pairs = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]  # i < j, so a train/test pair is (train, n + test)
    if len(pairs):
        all_sig = (train_sig, test_sig)
        ok = similarity(all_sig[0][pairs[:, 0]], all_sig[1][pairs[:, 1] - n]) >= threshold
        for i, j in pairs[ok].tolist():
            leaks.setdefault(i, j - n)
    return leaks


def dedup(train: list[dict], test: list[dict], cfg: DedupConfig) -> tuple[list[dict], list[dict], list[dict], DedupReport]:
    """(kept train rows, kept test rows, quarantine rows, report)."""
    train_in, test_in = len(train), len(test)
    split = 0
    if not test and cfg.split_test_fraction > 0:
        moved = [r for r in train if is_test_item(r, cfg.split_test_fraction, cfg.split_salt)]
        train = [r for r in train if not is_test_item(r, cfg.split_test_fraction, cfg.split_salt)]
        test, split = moved, len(moved)
    bands, rows = lsh_params(cfg.threshold, cfg.num_perm)
    hasher = MinHasher(cfg.num_perm, cfg.ngram, cfg.seed) if cfg.near else None
    quarantine: list[dict] = []

    def drop_rows(rows_: list[dict], split_name: str) -> tuple[list[dict], np.ndarray | None]:
        keys = np.fromiter((exact_key(r) for r in rows_), dtype=np.uint64, count=len(rows_)) if cfg.exact else \
            np.arange(len(rows_), dtype=np.uint64)
        sig = hasher.signatures([conversation_text(r) for r in rows_]) if hasher else None
        drop = find_duplicates(keys, sig, cfg.threshold, bands, rows)
        for i, (reason, of) in sorted(drop.items()):
            quarantine.append(_quarantine_row(rows_[i], reason, rows_[of], split_name))
        keep = np.array([i not in drop for i in range(len(rows_))], dtype=bool)
        return [r for r, k in zip(rows_, keep) if k], (sig[keep] if sig is not None else None)

    train, train_sig = drop_rows(train, "train")
    test, test_sig = drop_rows(test, "test")
    if cfg.leakage and test:
        leaks = find_leaks(np.fromiter((prompt_key(r) for r in train), dtype=np.uint64, count=len(train)), train_sig,
                           np.fromiter((prompt_key(r) for r in test), dtype=np.uint64, count=len(test)), test_sig,
                           cfg.threshold, bands, rows)
        for i, j in sorted(leaks.items()):
            quarantine.append(_quarantine_row(train[i], "test_leak", test[j], "train"))
        train = [r for i, r in enumerate(train) if i not in leaks]
    report = DedupReport(train_in=train_in, test_in=test_in, train_out=len(train), test_out=len(test),
                         split_to_test=split, reasons=dict(Counter(q["reason"] for q in quarantine)),
                         threshold=cfg.threshold, num_perm=cfg.num_perm, bands=bands, rows_per_band=rows)
    return train, test, quarantine, report


def _quarantine_row(record: dict, reason: str, other: dict, split: str) -> dict:
    src, osrc = record["source"], other["source"]
    what = {"duplicate": "repeats", "near_duplicate": "nearly repeats", "test_leak": "leaks test row"}[reason]
    return {"file": src["file"], "line": src["line"], "reason": reason, "field": None, "split": split,
            "duplicate_of": {"file": osrc["file"], "line": osrc["line"], "id": other["id"]},
            "message": f"{src['file']}:{src['line']}: {what} {osrc['file']}:{osrc['line']}", "record": record}


def dedup_files(data, cfg: DedupConfig, out_dir: Path):
    """The dedup stage on validate's output: returns (``ValidatedData`` with cleaned train/test, report, quarantine)."""
    out_dir = Path(out_dir)
    train, test = read_jsonl(Path(data.train)), read_jsonl(Path(data.test))
    if not cfg.enabled:
        kept_train, kept_test, quarantine = train, test, []
        report = DedupReport(train_in=len(train), test_in=len(test), train_out=len(train), test_out=len(test),
                             split_to_test=0, reasons={}, threshold=cfg.threshold, num_perm=cfg.num_perm,
                             bands=0, rows_per_band=0)
    else:
        kept_train, kept_test, quarantine, report = dedup(train, test, cfg)
    if not kept_train:
        raise DataValidationError(f"{data.train}: no training row left after dedup ({report.reasons})")
    paths = {"train": out_dir / "train.jsonl", "test": out_dir / "test.jsonl", "quarantine": out_dir / "quarantine.jsonl"}
    write_jsonl(paths["train"], kept_train)
    write_jsonl(paths["test"], kept_test)
    write_jsonl(paths["quarantine"], quarantine)
    write_json(out_dir / "report.json", report.model_dump())
    result = data.model_copy(update={"train": str(paths["train"]), "test": str(paths["test"])})
    return result, report, str(paths["quarantine"])


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="dedup", **stage_options())
def dedup_task(data, cfg: DedupConfig, run_dir: str):
    """Drop exact and near duplicates and train rows that leak the test set; split off a test set if there is none."""
    result, report, quarantine = dedup_files(data, cfg, Path(run_dir) / "dedup")
    create_table_artifact(
        key="dedup-report",
        table=[{"train in": report.train_in, "train out": report.train_out, "test in": report.test_in,
                "test out": report.test_out, "split to test": report.split_to_test,
                "reasons": json.dumps(report.reasons), "threshold": report.threshold,
                "bands x rows": f"{report.bands} x {report.rows_per_band}"}],
        description=f"Exact/near duplicates and train/test leakage removed. Quarantine: {quarantine}",
    )
    print(f"dedup: train {report.train_in} -> {report.train_out}, test {report.test_in} -> {report.test_out}, "
          f"{report.reasons or 'nothing dropped'}")
    return result
