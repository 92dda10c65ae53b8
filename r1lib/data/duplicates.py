"""Exact and near duplicates over whole batches of texts (numpy): MinHash signatures, LSH candidate pairs, and which
rows repeat or leak which.

Signatures are exactly ``datasketch.MinHash(scheme="affine32")`` of the same shingle hashes
(tests/stages/test_data_dedup.py checks that); banding uses the (bands, rows) that ``datasketch.MinHashLSH`` would
choose for a threshold. A word is a run of word characters, except that CJK characters (written without spaces) are one
word each."""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

import numpy as np

from r1lib.compat import lsh_optimal_params, minhash_fmix
from r1lib.data.preference import preference_texts
from r1lib.data.records import location
from r1lib.data.visible import INVISIBLE_RE, visible_text

_WS_RE = re.compile(r"\s+")


# A word is a run of word characters, except that CJK characters (written without spaces) are one word each.
_WORD_RE = re.compile(
    r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+"
)


_M32 = np.uint64(0xFFFFFFFF)


def normalize_text(text: str) -> str:
    """What counts as "the same text": NFKC, case-folded, invisible characters (zero-width...) gone, whitespace
    collapsed."""
    return _WS_RE.sub(" ", INVISIBLE_RE.sub("", unicodedata.normalize("NFKC", text)).casefold()).strip()


def hash64(text: str, salt: str = "") -> int:
    """A stable 64-bit hash (the same in every process and on every machine, unlike ``hash()``)."""
    return int.from_bytes(
        hashlib.blake2b(f"{salt}\x1f{text}".encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little"
    )


@functools.lru_cache(maxsize=64)
def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimizing false positives + negatives, as datasketch.MinHashLSH chooses them."""
    return lsh_optimal_params(threshold, num_perm)


class MinHasher:
    """MinHash signatures of many texts at once: word n-gram shingles -> uint32 hashes -> ``num_perm`` minima."""

    def __init__(self, num_perm: int = 64, ngram: int = 3, seed: int = 1):
        from datasketch import MinHash

        self.num_perm, self.ngram = num_perm, ngram
        a, b = MinHash(num_perm=num_perm, seed=seed, scheme="affine32").permutations
        self.a, self.b = np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)
        self._fmix = minhash_fmix()
        self._token_hash: dict[str, int] = {}

    def _tokens(self, text: str) -> list[int]:
        cache = self._token_hash
        out = []
        for word in _WORD_RE.findall(text):
            h = cache.get(word)
            if h is None:
                if len(cache) > 2_000_000:
                    cache.clear()
                h = cache[word] = int.from_bytes(
                    hashlib.blake2b(word.encode("utf-8", "surrogatepass"), digest_size=4).digest(), "little"
                )
            out.append(h)
        return out

    def shingle_hashes(self, texts: list[str], normalized: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(uint32 hash of every shingle of every text, the text index of each). A text shorter than ``ngram`` words is
        one shingle; an empty one gets a single fixed shingle. ``normalized``: the texts already went through
        normalize_text."""
        n = self.ngram
        tokens = []
        for text in texts:
            t = self._tokens(text if normalized else normalize_text(text)) or [0]
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
            g = g * np.uint64(0x9E3779B97F4A7C15) + flat[k : total - n + 1 + k]
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
            sig[owners[bounds[lo : lo + step]]] = np.minimum.reduceat(block, bounds[lo : lo + step] - b_lo, axis=0)
        return sig

    def signatures(self, texts: list[str], normalized: bool = False) -> np.ndarray:
        hashes, owners = self.shingle_hashes(texts, normalized)
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


def find_duplicates(
    keys: np.ndarray, sig: np.ndarray | None, threshold: float, bands: int, rows: int
) -> dict[int, tuple[str, int]]:
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


def find_leaks(
    train_prompt_keys: np.ndarray,
    train_sig: np.ndarray | None,
    test_prompt_keys: np.ndarray,
    test_sig: np.ndarray | None,
    threshold: float,
    bands: int,
    rows: int,
) -> dict[int, int]:
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


# --- the rows' text keys -------------------------------------------------------------------------------------------


def conversation_text(record: dict) -> str:
    """Everything a row says: system, turns and, for a preference row, its answers (two pairs of one prompt differ)."""
    parts = [record["system"]] if record.get("system") else []
    return "\n".join(parts + [m["content"] for m in record["messages"]] + [t for _, t in preference_texts(record)])


def prompt_text(record: dict) -> str:
    parts = [record["system"]] if record.get("system") else []
    return "\n".join(parts + [m["content"] for m in record["messages"] if m["role"] == "user"])


def is_test_item(record: dict, fraction: float, salt: str) -> bool:
    """The stable split: depends only on this row's normalized prompt, never on the other rows."""
    return fraction > 0 and hash64(normalize_text(prompt_text(record)), salt) < fraction * 2**64


def pair_orientation(record: dict) -> tuple[int, bool]:
    """(key, flipped) of a preference pair: the key hashes its whole conversation (system and every turn, assistant
    turns too, with roles: two pairs after different earlier answers are not the same question) and its two answers
    as a set (as read: visible_text), ``flipped`` says which way round they are; (0, False) for any other row."""
    if record.get("preference") != "pair":
        return 0, False
    chosen, rejected = visible_text(record["chosen"]), visible_text(record["rejected"])
    low, high = sorted((chosen, rejected))
    turns = [f"system\x1f{record.get('system') or ''}"] + [f"{m['role']}\x1f{m['content']}" for m in record["messages"]]
    conversation = "\x1d".join(normalize_text(t) for t in turns)
    return hash64("\x1e".join((conversation, low, high)), "pair") or 1, chosen > rejected


def find_contradictions(keys: np.ndarray, flipped: np.ndarray) -> dict[int, int]:
    """{row: a row preferring the other way} for every pair whose prompt and two answers another pair holds the other
    way round: both directions go, since which one the data means cannot be known (exact repeats of one direction
    too: they contradict the same row)."""
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for i in np.flatnonzero(keys).tolist():
        groups.setdefault(int(keys[i]), ([], []))[int(flipped[i])].append(i)
    out: dict[int, int] = {}
    for one, other in groups.values():
        if one and other:
            out |= {i: other[0] for i in one} | {i: one[0] for i in other}
    return out


def quarantine_row(record: dict, reason: str, other: dict, split: str) -> dict:
    """A removed row's quarantine entry, naming the row it repeats, leaks or contradicts (file and line of both)."""
    src = record["source"]
    what = {"duplicate": "repeats", "near_duplicate": "nearly repeats", "test_leak": "leaks test row",
            "contradictory_pair": "prefers the other answer of the same prompt than"}[reason]  # fmt: skip
    return {
        "file": src["file"],
        "line": src["line"],
        "reason": reason,
        "field": None,
        "split": split,
        "duplicate_of": other,
        "message": f"{location(src['file'], src['line'])}: {what} {location(other['file'], other['line'])}",
        "record": record,
    }
