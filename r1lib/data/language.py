"""Which language a text is written in, as far as augmentation needs to know: Chinese, English, or another.

Script counts decide it (no model): CJK ideographs against Latin letters; kana or Hangul make it another language
(Japanese, Korean); Latin text is English unless it holds more function words of French, German, Spanish,
Portuguese or Italian than of English. ``None`` for text without letters ("2 + 2 = ?").
"""

from __future__ import annotations

import re

_CJK_RE = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_KANA_HANGUL_RE = re.compile(r"[\u3040-\u30ff\u1100-\u11ff\uac00-\ud7af]")
_LATIN_RE = re.compile(r"[A-Za-z]")
_WORD_RE = re.compile(r"[A-Za-z']+")
# Function words of the commonest other Latin-script languages (French, German, Spanish, Portuguese, Italian).
_OTHER_WORDS = frozenset(
    "le la les des du est et une un il elle ils nous vous combien que qui pour dans avec pas sur ce cette sont "
    "der die das und ist nicht ein eine einen wie was ich sie mit von zu den dem auf wir "
    "el los las es y una por con para cuántos cuántas cómo qué está son del al lo "
    "o os um uma não são com da do em é di il che non sono della per".split()
)
_ENGLISH_WORDS = frozenset(
    "the a an is are was were be of and or to in on at for with what which who how why when where do does did can "
    "you your i it this that these those has have had will would should not there their they he she we my me".split()
)


def language_of(text: str) -> str | None:
    """ "zh", "en", "other", or None when the text has no letters."""
    if _KANA_HANGUL_RE.search(text):
        return "other"
    cjk = len(_CJK_RE.findall(text))
    latin = len(_LATIN_RE.findall(text))
    letters = sum(ch.isalpha() for ch in text)
    if not letters:
        return None
    if cjk / letters >= 0.15:  # an ideograph carries a word's worth of meaning: a few make the text Chinese
        return "zh"
    if latin / letters >= 0.7:
        words = [w.lower() for w in _WORD_RE.findall(text)]
        english = sum(w in _ENGLISH_WORDS for w in words)
        other = sum(w in _OTHER_WORDS for w in words)
        return "en" if english >= other else "other"  # no function word either way ("Explain entropy"): English
    return "other"
