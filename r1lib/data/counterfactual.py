"""Counterfactual twins that never rewrite facts: a group term is swapped only where it is an ordinary word about an
unnamed person, and a row about a named person gets no twin at all.

What is never changed (each occurrence kept as written):
- text inside code (fenced blocks, `inline code`, indented lines), formulas ($...$, $$...$$, \\(...\\), \\[...\\]) and
  quotes ("...", “...”, '...', 「...」, 『...』, «...»);
- protected phrases (``debias.protected_phrases_path``: "sister chromatid", "daughter cells", "His bundle"), whole
  words, any case;
- a term used as a symbol: touching a hyphen, digit, arrow or operator ("His-613", "Tyr64-->His"), capitalized in the
  middle of a sentence ("Cys, His, or Lys", "the King"), or a capitalized possessive right before punctuation
  ("(His, part-of, Pin1)");
- CJK text is segmented (r1lib.data.terms.segment): 他 is swapped only as a word, never inside 其他, 他人, 他们 or 吉他.

What gets no twin (the reason is counted in the stage report):
- ``named_person``: the row names a specific person: a title before a name ("King George III", "Queen Elizabeth II",
  "Sir Isaac Newton", "King Fahad ... Hospital"), two or more capitalized words in a row ("Julius Caesar"), or a
  person's name as jieba tags it (nr) in Chinese. Their pronouns are facts about that person;
- ``terms_in_reasoning``: the reasoning mentions a term and ``swap_reasoning`` is off (a twin with a swapped prompt and
  an unswapped reasoning would contradict itself);
- ``all_protected``: every term occurrence is protected, so nothing would change.

Single-word English names ("Lincoln said he ...") are not recognized: the stage writes a sample of original/twin pairs
(``debias/counterfactual_pairs.jsonl``) for a person to review before training.
"""

from __future__ import annotations

import re

from r1lib.data.records import content_key
from r1lib.data.terms import TermPairs

_QUOTED_RE = re.compile(
    r"\"[^\"\n]{1,2000}\"|“[^”]{1,2000}”|「[^」]{1,2000}」|『[^』]{1,2000}』|«[^»]{1,2000}»"
    r"|(?<![\w'])'(?=\S)[^'\n]{1,2000}(?<=\S)'(?![\w'])"
)
_CODE_RE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`|^(?: {4}|\t).*$", re.DOTALL | re.MULTILINE)
_FORMULA_RE = re.compile(r"\$\$.+?\$\$|(?<![\\$])\$[^$\n]+\$|\\\(.+?\\\)|\\\[.+?\\\]", re.DOTALL)
# Titles that, before a capitalized word or a roman numeral, name one person.
TITLES = (
    "king|queen|prince|princess|emperor|empress|duke|duchess|lord|lady|sir|dame|mr|mrs|ms|miss|madame|madam|dr|"
    "president|pope|saint|st|tsar|czar|sultan|sheikh|baron|baroness|count|countess|earl|archduke|father|sister|"
    "brother|uncle|aunt"
)
_TITLE_NAME_RE = re.compile(rf"\b(?i:{TITLES})\.?\s+(?:[A-Z][\w'’-]*|[IVXLC]+\b)")
_STOPWORDS = frozenset(
    "a an the and or but of in on at to for from by with as is was are were be my your his her its our their this "
    "that these those what which who when where why how it he she they we you i if then so".split()
)
_CAPITAL_RUN_RE = re.compile(r"\b[A-Z][a-z'’]+(?:\s+(?:[A-Z]\.|[A-Z][a-z'’]+))+")
_SENTENCE_END = ".!?。！？:;\n"
_OPENERS = " \t\"'“‘([{「『«*-•"
_SYMBOL_NEIGHBOURS = "-–<>=+*#@&_0123456789"
_POSSESSIVES = frozenset({"his", "her"})
_NAME_TAGS = frozenset({"nr", "nrfg", "nrt"})
_CJK_RE = re.compile(r"[\u3400-\u9fff]")


def protected_phrases(lines: list[str]) -> re.Pattern | None:
    """One pattern for the protected phrases: whole words, any case (CJK phrases as written)."""
    phrases = sorted({p.strip() for p in lines if p.strip() and not p.startswith("#")}, key=len, reverse=True)
    if not phrases:
        return None
    return re.compile("|".join(rf"(?<!\w){re.escape(p)}(?!\w)" for p in phrases), re.IGNORECASE)


def named_person(text: str) -> str | None:
    """A specific person the text names (see the module docstring), or None."""
    if match := _TITLE_NAME_RE.search(text):
        return match.group(0)
    for match in _CAPITAL_RUN_RE.finditer(text):
        words = match.group(0).split()
        while words and words[0].lower() in _STOPWORDS:
            words = words[1:]
        if len(words) >= 2:
            return " ".join(words)
    if _CJK_RE.search(text):
        import rjieba

        return next((word for word, tag in rjieba.tag(text) if tag in _NAME_TAGS), None)
    return None


def _sentence_initial(text: str, start: int) -> bool:
    i = start
    while i > 0 and text[i - 1] in _OPENERS:
        i -= 1
    return i == 0 or text[i - 1] in _SENTENCE_END


def is_symbol(text: str, start: int, end: int) -> bool:
    """Whether the term at text[start:end] is a symbol or a name rather than an ordinary word (module docstring)."""
    before, after = text[start - 1 : start], text[end : end + 1]
    if (before and before in _SYMBOL_NEIGHBOURS) or (after and after in _SYMBOL_NEIGHBOURS):
        return True
    word = text[start:end]
    if not word[:1].isupper() or word.isupper() and len(word) > 1 or not word.isascii():
        return False
    if not _sentence_initial(text, start):
        return True
    return word.lower() in _POSSESSIVES and after in (",", ")", ";", ":")


class Counterfactual:
    """Builds the twin of a record under the rules above; ``swap_text`` on one text, ``twin`` on a record."""

    def __init__(self, pairs: TermPairs, protected: list[str] | None = None, swap_reasoning: bool = False):
        self.pairs = pairs
        self.protected = protected_phrases(protected or [])
        self.swap_reasoning = swap_reasoning

    def protected_spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) of code, formulas, quotes and protected phrases in ``text``."""
        patterns = [_CODE_RE, _FORMULA_RE, _QUOTED_RE, *([self.protected] if self.protected else [])]
        return sorted(m.span() for pattern in patterns for m in pattern.finditer(text))

    def swap_text(self, text: str) -> tuple[str, int, int]:
        """(the text with every swappable term swapped, terms swapped, terms kept because protected)."""
        spans = None
        swapped = kept = 0

        def replace(match) -> str:
            nonlocal spans, swapped, kept
            if spans is None:
                spans = self.protected_spans(text)
            start, end = match.start(), match.end()
            if any(lo < end and start < hi for lo, hi in spans) or is_symbol(text, start, end):
                kept += 1
                return match.group(0)
            swapped += 1
            return self.pairs.replacement(match)

        out = self.pairs.pattern.sub(replace, text)
        return out, swapped, kept

    def twin(self, record: dict) -> tuple[dict | None, str | None]:
        """(the twin, None), or (None, why there is none); (None, None) when the record mentions no paired term."""
        texts = [record["system"], *(m["content"] for m in record["messages"])]
        reasoning = record.get("reasoning") or ""
        if not any(self.pairs.found(t) for t in [*texts, reasoning] if t):
            return None, None
        for text in [*texts, reasoning]:
            if text and named_person(text):
                return None, "named_person"
        if reasoning and self.pairs.found(reasoning) and not self.swap_reasoning:
            if self.swap_text(reasoning)[0] != reasoning:
                return None, "terms_in_reasoning"
        twin = {**record, "messages": [dict(m) for m in record["messages"]], "source": dict(record["source"])}
        twin["system"] = self.swap_text(record["system"])[0] if record["system"] else ""
        for message in twin["messages"]:
            message["content"] = self.swap_text(message["content"])[0]
        if reasoning and self.swap_reasoning:
            twin["reasoning"] = self.swap_text(reasoning)[0]
        if twin["system"] == record["system"] and twin["messages"] == record["messages"]:
            if twin.get("reasoning") == record.get("reasoning"):
                return None, "all_protected"
        twin.update(origin="counterfactual", parent=record["id"])
        twin["id"] = content_key(twin)[:16]
        return twin, None


def changes(record: dict, twin: dict) -> list[dict]:
    """The fields a twin changed, each with its original and twin text: what a reviewer reads."""
    out = []
    if record["system"] != twin["system"]:
        out.append({"field": "system", "original": record["system"], "twin": twin["system"]})
    for i, (a, b) in enumerate(zip(record["messages"], twin["messages"])):
        if a["content"] != b["content"]:
            out.append({"field": f"messages[{i}]", "original": a["content"], "twin": b["content"]})
    if record.get("reasoning") != twin.get("reasoning"):
        out.append({"field": "reasoning", "original": record.get("reasoning"), "twin": twin.get("reasoning")})
    return out
