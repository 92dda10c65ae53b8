"""Text as a reader sees it: what "the same answer" and "an empty answer" mean for the data stages.

A code point that shows nothing (zero-width space, a variation selector, a tag character, a Hangul filler...) makes no
difference a reader could see, so two texts differing only in such characters are the same (equal_sides,
contradictory_pair, duplicates) and a text of only such characters is empty (empty_field). Homoglyphs (a Cyrillic
``о`` for a Latin ``o``) are drawn, so they are not treated here.
"""

from __future__ import annotations

import re
import unicodedata

# Prepended concatenation marks (Arabic number signs...): category Cf, but drawn, so they stay.
_SHOWN_FORMAT = frozenset([*range(0x600, 0x606), 0x6DD, 0x70F, 0x890, 0x891, 0x8E2, 0x110BD, 0x110CD])
# Marks and letters that draw nothing: combining grapheme joiner, Hangul fillers, Mongolian free variation selectors,
# variation selectors, and the whole tag/variation-selector plane 14 block (default-ignorable, assigned or not).
_BLANK_RANGES = ((0x34F, 0x34F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F), (0x3164, 0x3164),
                 (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0), (0xE0000, 0xE0FFF))  # fmt: skip


def _invisible_class() -> str:
    """A regex class of every code point that shows nothing: category Cf (format: zero-width space and joiners,
    direction marks, word joiner, BOM, soft hyphen, tags, musical beams...) bar the drawn ones, plus _BLANK_RANGES.
    Cf lives in planes 0, 1 and 14 (the last covered by _BLANK_RANGES): scanning 0-0x1FFFF finds all of it."""
    points = [c for c in range(0x20000) if c not in _SHOWN_FORMAT and unicodedata.category(chr(c)) == "Cf"]
    ranges = [(c, c) for c in points] + list(_BLANK_RANGES)
    return "[" + "".join(f"\\U{a:08x}-\\U{b:08x}" if a != b else f"\\U{a:08x}" for a, b in sorted(ranges)) + "]"


# Two texts differing only in these read the same (equal_sides, contradictory_pair, duplicates, empty answers).
INVISIBLE_RE = re.compile(_invisible_class())
_WS_RE = re.compile(r"\s+")


def visible_text(text: str) -> str:
    """A text as a reader sees it: NFKC, invisible format characters removed, whitespace collapsed (case kept)."""
    return _WS_RE.sub(" ", INVISIBLE_RE.sub("", unicodedata.normalize("NFKC", text))).strip()
