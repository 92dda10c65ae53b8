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

Case is decided by grammar: "her" becomes "him" where it is an object ("sees her and gives her double the
amount" -> "sees him and gives him double the amount") and "his" where it is a possessive ("to her friends"), by the
words around it (r1lib/data/person_words.py); "his" standing alone becomes "hers" ("the book is his.").

What gets no twin (the reason is counted in the stage report):
- ``named_person``: the row names a specific person: a title before a name ("King George III", "Queen Elizabeth II",
  "Sir Isaac Newton", "King Fahad ... Hospital"), two or more capitalized words in a row ("Julius Caesar"), "named
  X"/"called X", a capitalized word inside a sentence (not after "the"/"a", not in brackets, not a day, month,
  country or "I"), a capitalized word opening a sentence that is not a common word ("Natalia sold clips to her
  friends", "John and his wife", "Jo-Bob hopped"), any capitalized Latin word in
  Chinese text, or in Chinese a name as jieba tags it (nr) or a word opening a clause right before 他/她
  ("允礼他不是外人"). Their pronouns are facts about that person;
- ``ambiguous_case``: an English "her" whose case the words around it do not settle ("saw her mother" or "saw her
  leave"), so neither "his" nor "him" is certain;
- ``unpaired_gendered``: a gendered word the term pairs do not swap (prince, grandmother, sons, 王子, 哥哥 ...): the
  twin would contradict itself ("the young prince returned to her kingdom");
- ``sex_specific``: the row is about a sex-specific body or condition (pregnancy, prostate, 子宫): its twin is false;
- ``terms_in_reasoning``: the reasoning mentions a term and ``swap_reasoning`` is off (a twin with a swapped prompt and
  an unswapped reasoning would contradict itself);
- ``all_protected``: every term occurrence is protected, so nothing would change.

The stage writes a sample of original/twin pairs (``debias/counterfactual_pairs.jsonl``) for a person to review before
training; bench/counterfactual_check.py reads sampled twins of public sets by rules of its own.
"""

from __future__ import annotations

import re

from r1lib.data.person_words import (
    CJK_CLAUSE_WORDS,
    COMMON_STARTERS,
    DITRANSITIVE,
    NOT_NAMES,
    NUMBER_LIKE,
    OBJECT_COMPLEMENTS,
    OBJECT_FOLLOWERS,
    POSSESSED,
    POSSESSIVE_CONTEXT,
    SEX_SPECIFIC,
    UNPAIRED,
)
from r1lib.data.records import content_key
from r1lib.data.terms import TermPairs

_QUOTED_RE = re.compile(
    r"\"[^\"\n]{1,2000}\"|“[^”]{1,2000}”|「[^」]{1,2000}」|『[^』]{1,2000}』|«[^»]{1,2000}»"
    r"|(?<![\w'])'(?=\S)[^'\n]{1,2000}(?<=\S)'(?![\w'])"
)
_CODE_RE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]+`|^(?: {4}|\t).*$", re.DOTALL | re.MULTILINE)
# Inline $...$ as TeX reads it: no space inside either dollar, no digit after the closing one, so that two amounts
# ("$460, then the man's land is worth $460") are no formula.
_FORMULA_RE = re.compile(r"\$\$.+?\$\$|(?<![\\$])\$(?=\S)[^$\n]+?(?<=\S)\$(?!\d)|\\\(.+?\\\)|\\\[.+?\\\]", re.DOTALL)
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


_NAMED_RE = re.compile(r"\b(?:named|called|nicknamed)\s+[A-Z][\w'’-]*")
# A capitalized word: "Natalia", "Jo-Bob", "LaKeisha", "TreShaun's", "Françoise", "Méliès", or initials "TJ".
_CAPITAL_WORD_RE = re.compile(
    r"(?<![\w'’-])([A-ZÀ-ÖØ-Þ](?:[^\W\d_]*[a-zß-öø-ÿ][^\W\d_]*|[A-Z])(?:-[A-Z][^\W\d_]*)*(?:['’][a-z]+)?)(?![\w-])"
)
# Capitals that are no initials of a person.
_ACRONYMS = frozenset(
    "US USA UK EU UN TV DNA RNA CPU GPU AI API PDF CEO ATM OK AM PM BC AD ID IQ NBA NFL GDP SQL URL FBI CIA IT HR "
    "CO2 PC PE PR QA USB FAQ CV UI UX BMI ICU ER RAM SSD MBA PHD".split()
)
_BRACKETED_RE = re.compile(r"\([^()\n]{1,200}\)|\[[^\[\]\n]{1,200}\]")
_ARTICLE_BEFORE_RE = re.compile(r"\b(?:the|a|an)\s+$", re.IGNORECASE)
_CJK_CLAUSE_START = '，。！？；：、,.!?;:\n“”"「」（）() '


def _capitalized_name(text: str, pronouns: frozenset[str], row_has_terms: bool) -> str | None:
    """A capitalized word that is a name by the rules of the module docstring, or None."""
    cjk = bool(_CJK_RE.search(text))
    brackets = [m.span() for m in _BRACKETED_RE.finditer(text)]  # "(Subject, Object)": labels, not people
    for match in _CAPITAL_WORD_RE.finditer(text):
        word = match.group(1)
        if any(lo < match.start() < hi for lo, hi in brackets):
            continue
        base = re.split(r"['’]", word)[0]
        if base.lower() in pronouns or word in _ACRONYMS:
            continue
        if cjk:
            return word  # Latin capitals inside Chinese text: a name or a term, never a swappable word
        if _sentence_initial(text, match.start()):
            # An uncommon word opening a sentence of a row with paired terms is taken for a name ("Weng earns $12 an
            # hour. Yesterday, she ...", "James drives to Canada. ... He has a stop"). No suffix rule: "Emily",
            # "Ned" and "Sally" end as adverbs and participles do.
            if row_has_terms and base.lower() not in COMMON_STARTERS:
                return word
        elif word not in NOT_NAMES and not _ARTICLE_BEFORE_RE.search(text[max(0, match.start() - 8) : match.start()]):
            return word  # (opening a sentence, "Asia bought a dress" is a person: NOT_NAMES holds only inside one)
    return None


def named_person(text: str, pronouns: frozenset[str] = frozenset(), row_has_terms: bool = False) -> str | None:
    """A specific person the text names (see the module docstring), or None. ``pronouns``: the paired terms, which
    are never names themselves; ``row_has_terms``: the row mentions one (then an uncommon word opening a sentence
    is taken for a name)."""
    if match := _TITLE_NAME_RE.search(text):
        return match.group(0)
    if match := _NAMED_RE.search(text):
        return match.group(0)
    for match in _CAPITAL_RUN_RE.finditer(text):
        words = match.group(0).split()
        while words and words[0].lower() in _STOPWORDS:
            words = words[1:]
        if len(words) >= 2:
            return " ".join(words)
    if name := _capitalized_name(text, pronouns, row_has_terms):
        return name
    if _CJK_RE.search(text):
        import rjieba

        tagged = rjieba.tag(text)
        if name := next((word for word, tag in tagged if tag in _NAME_TAGS), None):
            return name
        for k, (word, _) in enumerate(tagged):
            if word in ("他", "她") and k and len(before := tagged[k - 1][0]) >= 2 and before not in CJK_CLAUSE_WORDS:
                opens = k == 1 or tagged[k - 2][0][-1:] in _CJK_CLAUSE_START
                if opens and _CJK_RE.fullmatch(before[0]) and tagged[k - 1][1] not in ("c", "d", "p", "r", "m", "t"):
                    return before  # a name in apposition: "允礼他不是外人"
    return None


_WORD_AFTER_RE = re.compile(r"[ \t]*([A-Za-z]+|[$€£¥]?\d[\d,.]*)?")
_WORD_BEFORE_RE = re.compile(r"([A-Za-z]+(?:['’]s)?)[ \t]*$")


def pronoun_case(text: str, start: int, end: int) -> str | None:
    """What the English "her" at text[start:end] becomes: "him" (an object), "his" (a possessive), or None when the
    words around it do not settle it."""
    after = _WORD_AFTER_RE.match(text, end)
    nxt = (after.group(1) or "").lower()
    before = _WORD_BEFORE_RE.search(text[max(0, start - 40) : start])
    prev = before.group(1).lower().replace("’", "'") if before else ""
    prev = "'s" if prev.endswith("'s") and prev not in POSSESSIVE_CONTEXT else prev
    if not nxt:  # "saw her.", "with her, ..."; another sign after it ("her (", "her “") settles nothing
        rest = text[after.end() : after.end() + 1]
        return "him" if not rest or rest in ".,;:!?)]}\n\"'”’" else None
    if nxt in OBJECT_FOLLOWERS:
        return "him"  # "gave her the book", "told her to"
    if nxt in POSSESSED:
        return "his"  # "her friends", "her own"
    if not prev or prev in POSSESSIVE_CONTEXT:
        return None if nxt in OBJECT_COMPLEMENTS else "his"  # "to her kingdom", "Her book"
    if NUMBER_LIKE.match(nxt.lstrip("$€£¥")):
        return "him" if prev in DITRANSITIVE else None  # "gives her double the amount"
    if nxt in OBJECT_COMPLEMENTS:
        return "him"  # "made her happy", "let her go"
    return None  # "saw her mother" or "saw her leave": a verb before, a word after that could be either


def _his_alone(text: str, end: int) -> bool:
    """Whether "his" at ``end`` stands alone ("the book is his."): then its partner is "hers"."""
    after = _WORD_AFTER_RE.match(text, end)
    return not after.group(1) and (end >= len(text) or text[after.end() : after.end() + 1] in ".,;:!?)\n\"'”")


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

    def _ambiguous_case(self, texts: list[str]) -> bool:
        """Whether a swappable English "her" in ``texts`` has a case the words around it do not settle."""
        if not {"his", "him"} <= self.pairs.swap.keys():
            return False
        for text in texts:
            if not text or "her" not in text.lower():
                continue
            spans = self.protected_spans(text)
            for match in re.finditer(r"(?<![\w'’-])her(?![\w'’-])", text, re.IGNORECASE):
                start, end = match.span()
                protected = any(lo < end and start < hi for lo, hi in spans) or is_symbol(text, start, end)
                if not protected and pronoun_case(text, start, end) is None:
                    return True
        return False

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
            word = match.group(0).lower()
            if word == "her" and {"his", "him"} <= self.pairs.swap.keys():
                target = pronoun_case(text, start, end) or self.pairs.replacement(match).lower()
                return self.pairs._match_case(match.group(0), target)
            if word == "his" and self.pairs.swap.get("his") == "her" and _his_alone(text, end):
                return self.pairs._match_case(match.group(0), "hers")
            return self.pairs.replacement(match)

        out = self.pairs.pattern.sub(replace, text)
        return out, swapped, kept

    def twin(self, record: dict) -> tuple[dict | None, str | None]:
        """(the twin, None), or (None, why there is none); (None, None) when the record mentions no paired term."""
        texts = [record["system"], *(m["content"] for m in record["messages"])]
        reasoning = record.get("reasoning") or ""
        if not any(self.pairs.found(t) for t in [*texts, reasoning] if t):
            return None, None
        pronouns = frozenset(self.pairs.swap)
        for text in [*texts, reasoning]:
            if text and named_person(text, pronouns, row_has_terms=True):
                return None, "named_person"
        if any(text and SEX_SPECIFIC.search(text) for text in [*texts, reasoning]):
            return None, "sex_specific"
        if any(text and UNPAIRED.search(text) for text in [*texts, reasoning]):
            return None, "unpaired_gendered"
        if self._ambiguous_case([*texts, reasoning] if self.swap_reasoning else texts):
            return None, "ambiguous_case"
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
