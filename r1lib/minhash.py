"""MinHash signatures and LSH candidate pairs over whole batches of texts (numpy), for near-duplicate detection.

Signatures are exactly ``datasketch.MinHash(scheme="affine32")`` of the same shingle hashes (tests/test_data_dedup.py
checks that); banding uses the (bands, rows) that ``datasketch.MinHashLSH`` would choose for a threshold. A word is a
run of word characters, except that CJK characters (written without spaces) are one word each.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata

import numpy as np

from r1lib.compat import lsh_optimal_params, minhash_fmix

_WS_RE = re.compile(r"\s+")


# A word is a run of word characters, except that CJK characters (written without spaces) are one word each.
_WORD_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]|[^\W\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]+")


_M32 = np.uint64(0xFFFFFFFF)


def normalize_text(text: str) -> str:
    """What counts as "the same text": NFKC, case-folded, whitespace collapsed."""
    return _WS_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def hash64(text: str, salt: str = "") -> int:
    """A stable 64-bit hash (the same in every process and on every machine, unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\x1f{text}".encode("utf-8", "surrogatepass"),
                                          digest_size=8).digest(), "little")


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
                h = cache[word] = int.from_bytes(hashlib.blake2b(word.encode("utf-8", "surrogatepass"),
                                                                 digest_size=4).digest(), "little")
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
