"""Finding and swapping terms in text: the blocklist and the group term pairs of the debias stage.

Terms match as whole words in any script: a term in Latin script must not be part of a longer word. CJK is written
without spaces, so a CJK term is either matched where it is written (the blocklist: a slur inside a longer word is
still one) or, for the group term pairs, only where a word segmenter (jieba, through rjieba) finds it as a whole word:
他 in 他说, never in 其他 ("other"), 他们 ("they") or 吉他 ("guitar").
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterator
from pathlib import Path

from r1lib.errors import ConfigError

_CJK_TERM_RE = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


_WORD_RE = re.compile(r"\w+")


@functools.lru_cache(maxsize=1 << 14)
def _lower_words(text: str) -> tuple[str, ...]:
    """The words of an ASCII text in lower case; cached because the blocklist and the term pairs both ask."""
    return tuple(_WORD_RE.findall(text.lower()))


_ASCII_WORD_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"


def segment(text: str) -> list[tuple[str, int, int]]:
    """(word, start, end) of every word of ``text`` as jieba segments it (character offsets; spaces and punctuation
    are words of their own). Dictionary words only (no HMM guesses): a term joins a longer word only where the
    dictionary has that word (其他, 他们, 吉他), never in a guessed one ("他弹")."""
    import rjieba

    return rjieba.tokenize(text, hmm=False)


class Found:
    """One term found in a text: what ``re.Match`` offers that the callers use (group(0), start, end, span, string)."""

    __slots__ = ("string", "_start", "_end")

    def __init__(self, string: str, start: int, end: int):
        self.string, self._start, self._end = string, start, end

    def group(self, index: int = 0) -> str:
        return self.string[self._start : self._end]

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end

    def span(self) -> tuple[int, int]:
        return self._start, self._end


class TermPattern:
    r"""A compiled term pattern (``search``/``finditer``/``sub`` as on ``re.Pattern``) that answers an ASCII text
    holding no term by a set lookup of its words instead of a scan: the alternation of every term is tried at every
    position, ~10x slower on long reasoning, and most texts hold no term.

    The shortcut is exact: in ASCII text a case-insensitive whole-word match of an ASCII word term is a ``\w+`` run
    equal to it in lower case, and a term with a character that matches no ASCII character even ignoring case (é,
    白; unlike ſ or the Kelvin sign) never matches ASCII text. Any other term (one like "e.g.") turns it off."""

    def __init__(self, terms: list[str], cjk_words: bool = False):
        ordered = sorted(set(terms), key=len, reverse=True)  # longest first: "his" must not shadow "himself"
        words = [re.escape(t) for t in ordered if not _CJK_TERM_RE.search(t)]
        cjk = [re.escape(t) for t in ordered if _CJK_TERM_RE.search(t)]
        # With cjk_words, CJK terms are found by segmentation (segment), not by the pattern.
        self.cjk_words = frozenset(t for t in ordered if _CJK_TERM_RE.search(t)) if cjk_words else frozenset()
        self._cjk_chars = frozenset("".join(self.cjk_words))
        # The word terms share one boundary check around a single alternation (6x faster than one per term).
        parts = ([rf"(?<!\w)(?:{'|'.join(words)})(?!\w)"] if words else []) + ([] if cjk_words else cjk)
        self.pattern = re.compile("|".join(parts) or r"(?!x)x", re.IGNORECASE)
        ascii_words: set[str] | None = set()
        for term in ordered:
            if term in self.cjk_words:
                continue  # found by segmentation, never in ASCII text
            if term.isascii() and re.fullmatch(r"\w+", term):
                ascii_words.add(term.lower())
            elif not any(
                not c.isascii() and not any(re.fullmatch(re.escape(c), a, re.IGNORECASE) for a in _ASCII_WORD_CHARS)
                for c in term
            ):
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

    def _segmented(self, text: str) -> list[Found]:
        """The CJK terms that are whole words of ``text`` (cjk_words)."""
        if not self.cjk_words or self._cjk_chars.isdisjoint(text):
            return []
        return [Found(text, start, end) for word, start, end in segment(text) if word in self.cjk_words]

    def search(self, text: str) -> re.Match | Found | None:
        return next(iter(self.finditer(text)), None)

    def finditer(self, text: str) -> Iterator[re.Match | Found]:
        if self.absent(text):
            return iter(())
        if not self.cjk_words:
            return self.pattern.finditer(text)
        found = [*self.pattern.finditer(text), *self._segmented(text)]
        return iter(sorted(found, key=lambda m: m.start()))

    def sub(self, repl, text: str) -> str:
        if self.absent(text):
            return text
        if not self.cjk_words:
            return self.pattern.sub(repl, text)
        out, at = [], 0
        for match in self.finditer(text):
            out += [text[at : match.start()], repl(match)]
            at = match.end()
        return "".join(out) + text[at:]


def compile_terms(terms: list[str], cjk_words: bool = False) -> TermPattern | None:
    r"""One case-insensitive pattern for all terms: whole words (``(?<!\w)term(?!\w)``); CJK terms as substrings, or
    with ``cjk_words`` only where segmentation finds them as whole words."""
    return TermPattern(terms, cjk_words) if terms else None


def load_blocklist(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]


_NEXT_WORD_RE = re.compile(r"[ \t]*(\w+)?")


_SLASH_AFTER_RE = re.compile(r"\s*/\s*(\w+)")


_SLASH_BEFORE_RE = re.compile(r"(\w+)\s*/\s*$")


# Words after which "her" is an object ("him"), not a possessive ("his").
_AFTER_OBJECT = {
    "and",
    "or",
    "but",
    "to",
    "with",
    "at",
    "in",
    "on",
    "for",
    "from",
    "that",
    "then",
    "again",
    "too",
    "the",
    "a",
    "an",
    "about",
    "as",
    "by",
    "so",
    "if",
    "when",
    "because",
    "yesterday",
    "today",
    "now",
    "here",
    "there",
    "up",
    "down",
    "out",
    "off",
    "back",
    "away",
    "into",
    "of",
    "is",
    "was",
    "not",
}


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
        self.pattern = compile_terms(list(self.swap), cjk_words=True)
        # Augmented variants repeat their parent's texts (reasoning, answer): each distinct text is scanned once.
        self._swapped: dict[str, str] = {}
        self._found: dict[str, tuple] = {}

    @classmethod
    def load(cls, path: Path) -> TermPairs:
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

    def _partner(self, match: re.Match | Found) -> str:
        term = self.term(match.group(0))
        target = self.swap[term]
        # English "her" is both "his" (her book) and "him" (saw her, gave her the book): the next word decides.
        if term == "her" and {"his", "him"} <= set(self.swap):
            # "his/her", "her/him": the slash pairs it with the form it must become
            beside = _SLASH_AFTER_RE.match(match.string, match.end()) or _SLASH_BEFORE_RE.search(
                match.string[max(0, match.start() - 40) : match.start()]
            )
            if beside and beside.group(1).lower() in ("his", "him"):
                return beside.group(1).lower()
            following = _NEXT_WORD_RE.match(match.string, match.end())
            nxt = following.group(1).lower() if following and following.group(1) else ""
            target = "him" if not nxt or nxt in _AFTER_OBJECT else "his"
        return target

    def replacement(self, match: re.Match | Found) -> str:
        """The partner of the term ``match`` found, in its case."""
        return self._match_case(match.group(0), self._partner(match))

    def swap_text(self, text: str) -> str:
        """Every paired term swapped for its partner at once (so "his/her" -> "her/his"), case kept ("HE" -> "SHE",
        "He's" -> "She's"); whole words only, in CJK as the segmenter finds them. No protection of names, quotes or
        code: r1lib/data/counterfactual.py decides what may be swapped."""
        out = self._swapped.get(text)
        if out is None:
            if len(self._swapped) > 200_000:
                self._swapped.clear()
            out = self._swapped[text] = self.pattern.sub(self.replacement, text)
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
