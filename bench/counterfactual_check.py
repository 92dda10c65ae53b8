"""Read counterfactual twins the way a reviewer would, and flag every change beyond the swapped pair.

    python -m bench.counterfactual_check FILE [FILE ...] [--sample 200] [--seed 0] [--json OUT]

Each file is validated as the pipeline does (tasks/validate.py), each record gets its twin from the default
debias rules (data/debias/term_pairs.csv, protected_phrases.txt; r1lib/data/counterfactual.py), and a seeded sample of
the twins is checked by rules of this script's own (not the rules that made the twin):

- ``beyond_pair``: a word changed that is not a listed term swapped for its partner (her may become him, his or
  hers), or the word count changed;
- ``case``: a swapped pronoun in the wrong case: "his" before an article, a number, a quantifier or the end of a
  clause ("gives his double the amount": him), "hers" before a word, "him" before "own";
- ``named_person``: the row names someone (a capitalized word inside a sentence, "named X", a Chinese name as jieba
  tags it, or a Chinese word right before 他/她 at the start of a clause), whose pronouns are facts;
- ``unpaired_gendered``: a gendered word the twin left as it was (prince, actress, 王子 ...) beside a swapped one;
- ``sex_specific``: the row is about a sex-specific body or condition (pregnancy, prostate, 子宫 ...).

Prints one line per file and the flagged twins; ``--json`` writes the numbers (bench/results/).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

from r1lib.data.person_words import CJK_CLAUSE_WORDS

ROOT = Path(__file__).resolve().parent.parent

_TOKEN_RE = re.compile(r"[\u3400-\u9fff]|[A-Za-z]+(?:'[A-Za-z]+)?|\d+|\S")
# A possessive never stands before an article; before a number it does only after a preposition ("between his 3
# children"), so after anything else "his 3" was an object ("gives him 3").
_CASE_AFTER_HIS = re.compile(
    r"\bhis\s+(?:the|a|an|[.,;:!?)])(?!\w)|(?<!\bbetween )(?<!\bof )(?<!\bto )(?<!\bwith )(?<!\bfor )(?<!\band )"
    r"(?<!\bfrom )(?<!\bon )(?<!\bin )(?<!\bat )(?<!\bby )\bhis\s+(?:\d[\d,.]*|twice|double|half|triple)\b",
    re.IGNORECASE,
)
_HIS_AT_END = re.compile(r"\bhis\s*$", re.IGNORECASE)
_HERS_BEFORE_WORD = re.compile(r"\bhers\s+(?!and\b|or\b|is\b|was\b|are\b|were\b|too\b|as\b|than\b)[a-z]", re.IGNORECASE)
_HIM_OWN = re.compile(
    r"\bhim\s+own\b|\b(?:of|from|in|on|at|during|into|within|under)\s+him\s+[$€£¥\d]", re.IGNORECASE
)  # a possessive made an object: "him own", "of him $150"
_NAMED = re.compile(r"\b(?:named|called|nicknamed)\s+[A-Z]")
_GENDERED = re.compile(
    r"\b(?:princes?|princess(?:es)?|emperors?|empress(?:es)?|dukes?|duchess(?:es)?|nephews?|nieces?|"
    r"grand(?:father|mother|son|daughter|pa|ma)s?|boyfriends?|girlfriends?|actors?|actress(?:es)?|waiters?|"
    r"waitress(?:es)?|heroes|heroines?|brides?|grooms?|monks?|nuns?|widows?|widowers?|fianc[eé]e?s?|"
    r"moms?|mums?|dads?|ma'am|madam|sirs?|stepfathers?|stepmothers?|priests?|priestess(?:es)?)\b",
    re.IGNORECASE,
)
_GENDERED_ZH = re.compile(
    r"王子|公主|皇帝|皇后|太子|妃|嫔|娘娘|皇上|阿哥|格格|爷爷|奶奶|外公|外婆|叔叔|阿姨|舅舅|姑姑|伯伯"
)
_SEX_SPECIFIC = re.compile(
    r"pregnan|breastfe|lactat|menstru|uter(?:us|ine)|ovar|cervi[xc]|prostat|testic|testes|scrot|vagin|penis|penile|"
    r"miscarr|postpartum|menopaus|gynec|obstetric|怀孕|妊娠|孕|月经|子宫|卵巢|宫颈|前列腺|睾丸|阴道|产后|绝经|哺乳|经期",
    re.IGNORECASE,
)
_SUBJECT_VERB_RE = re.compile(
    r"(?:^|(?<=[.!?\n])\s*|(?<=[.!?]\s))([A-ZÀ-Þ](?:[^\W\d_]*[a-zß-ÿ][^\W\d_]*|[A-Z])(?:-[A-Z][^\W\d_]*)*)(?:['’]s)?,?\s+"
    r"(?:[a-z]+(?:ed|es)|(?!is\b|was\b|has\b|does\b|this\b|his\b|its\b|us\b)[a-z]{2,}s|sold|bought|had|made|took|went|"
    r"got|gave|ran|ate|spent|saw|found|paid|won|lost|left|kept|wrote|read|drove|grew|can|will|wants|needs)\b"
)
_ARTICLES_AND_PRONOUNS = frozenset(
    "the a an this that these those he she it they we you his her its there each every all some many most both one two "
    "three four five six seven eight nine ten twelve twenty half few several what who how when where why which if "
    "in on at for from after before while since during as because so but and or then once now today yesterday "
    "last next first every any no not".split()
)
_SENTENCE_END = '.!?。！？:;\n"“”'
_NOT_NAMES = frozenset(
    {"I", "I'm", "I'll", "I've", "I'd"}
    | set("China Japan India Canada Mexico Spain France Germany Italy Egypt Peru Norway Britain England".split())
    | set("Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split())
    | set("January February March April May June July August September October November December".split())
)


def _names(text: str) -> list[str]:
    found = []
    if match := _NAMED.search(text):
        found.append(match.group(0))
    for match in re.finditer(r"(?<![\w'])([A-ZÀ-Þ][^\W\d_]*[a-zß-ÿ][^\W\d_]*)\b(?!-)", text):
        i = match.start() - 1
        while i >= 0 and text[i] in " \t'\"“‘([*-":
            i -= 1
        after_article = re.search(r"\b(?:the|a|an)\s+$", text[max(0, match.start() - 8) : match.start()], re.I)
        if i >= 0 and text[i] not in _SENTENCE_END and match.group(1) not in _NOT_NAMES and not after_article:
            found.append(match.group(1))
    if re.search(r"[\u3400-\u9fff]", text):
        import rjieba

        tagged = rjieba.tag(text)
        found += [w for w, tag in tagged if tag in ("nr", "nrfg", "nrt")]
        for k, (word, _) in enumerate(tagged):
            # Conjunctions and common verbs open clauses too ("所以他", "知道他"): the pipeline's own list of them.
            if word in ("他", "她") and k and len(tagged[k - 1][0]) >= 2 and tagged[k - 1][0] not in CJK_CLAUSE_WORDS:
                start = k - 1 == 0 or tagged[k - 2][0] in '，。！？；：、,.!?;: \n“”"「」'
                if start and re.fullmatch(r"[\u3400-\u9fff]+", tagged[k - 1][0]):
                    found.append(tagged[k - 1][0])
    # A capitalized word opening a sentence, then a verb in the past or third person ("James drives", "Natalia
    # sold", "Jo-Bob hopped"): a person doing something.
    for match in _SUBJECT_VERB_RE.finditer(text):
        if match.group(1).lower() not in _ARTICLES_AND_PRONOUNS and match.group(1) not in _NOT_NAMES:
            found.append(match.group(1))
    # Camel-case names and initials ("LaKeisha", "TreShaun", "CJ, KJ, and AJ"), wherever they stand.
    acronyms = {"US", "UK", "EU", "UN", "TV", "AI", "OK", "AM", "PM", "BC", "AD", "ID", "IQ", "IT"}
    found += [
        m.group(0) for m in re.finditer(r"\b[A-Z][a-z]+[A-Z][a-z]+\b|\b[A-Z]{2}\b", text) if m.group(0) not in acronyms
    ]
    return found


def _pairs() -> dict[str, set[str]]:
    import csv

    partners: dict[str, set[str]] = {}
    with open(ROOT / "data" / "debias" / "term_pairs.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            a, b = row["term_a"].lower(), row["term_b"].lower()
            partners.setdefault(a, set()).add(b)
            partners.setdefault(b, set()).add(a)
    partners.setdefault("her", set()).update({"him", "his", "hers"})
    for word in ("him", "his", "hers"):
        partners.setdefault(word, set()).add("her")
    partners.setdefault("his", set()).add("hers")
    partners.setdefault("hers", set()).add("his")
    return partners


def flags(original: str, twin: str, partners: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(kind, evidence) of every problem the twin of ``original`` has (module docstring)."""
    out: list[tuple[str, str]] = []
    a, b = _TOKEN_RE.findall(original), _TOKEN_RE.findall(twin)
    if len(a) != len(b):
        out.append(("beyond_pair", f"{len(a)} tokens became {len(b)}"))
    else:
        for x, y in zip(a, b):
            bare_x, bare_y = re.sub(r"'[a-z]+$", "", x.lower()), re.sub(r"'[a-z]+$", "", y.lower())
            if x != y and bare_y not in partners.get(bare_x, set()):
                out.append(("beyond_pair", f"{x!r} -> {y!r}"))
    if original == twin:
        return out
    for pattern in (_CASE_AFTER_HIS, _HIS_AT_END, _HERS_BEFORE_WORD, _HIM_OWN):
        for match in pattern.finditer(twin):
            if match.group(0).lower() not in original.lower():
                out.append(("case", match.group(0)))
    for name in _names(original):
        out.append(("named_person", name))
    swapped = {x.lower() for x, y in zip(a, b) if x != y}
    left = {m.group(0).lower() for m in _GENDERED.finditer(twin)} | set(_GENDERED_ZH.findall(twin))
    if swapped and left - swapped:
        out.append(("unpaired_gendered", ", ".join(sorted(left - swapped))))
    if match := _SEX_SPECIFIC.search(original):
        out.append(("sex_specific", match.group(0)))
    return out


def check_file(path: str, sample: int, seed: int) -> dict:
    from r1lib.config import DebiasConfig
    from r1lib.data.counterfactual import changes
    from tasks.debias import load_lists
    from tasks.validate import validate_file

    cfg = DebiasConfig(counterfactual=True)
    _, _, swapper = load_lists(cfg)
    records, _, _ = validate_file(path, max_chars=100_000)
    twins, skipped = [], Counter()
    for record in records:
        twin, reason = swapper.twin(record)
        if twin is not None:
            twins.append((record, twin))
        elif reason:
            skipped[reason] += 1
    picked = random.Random(seed).sample(twins, min(sample, len(twins)))
    partners = _pairs()
    flagged = []
    for record, twin in picked:
        for change in changes(record, twin):
            for kind, evidence in flags(change["original"] or "", change["twin"] or "", partners):
                flagged.append({"kind": kind, "evidence": evidence, "field": change["field"],
                                "original": change["original"][:300], "twin": change["twin"][:300]})  # fmt: skip
    return {
        "file": str(path),
        "rows": len(records),
        "twins": len(twins),
        "skipped": dict(skipped),
        "sampled": len(picked),
        "flagged_twins": len({(f["original"], f["twin"]) for f in flagged}),
        "flags": dict(Counter(f["kind"] for f in flagged)),
        "examples": flagged[:20],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--sample", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results = [check_file(f, args.sample, args.seed) for f in args.files]
    for r in results:
        print(f"{r['file']}: {r['rows']} rows, {r['twins']} twins, skipped {r['skipped']}, {r['sampled']} sampled, "
              f"{r['flagged_twins']} flagged {r['flags']}")  # fmt: skip
        for example in r["examples"]:
            before, after = example["original"][:120], example["twin"][:120]
            print(f"  [{example['kind']}] {example['evidence']}: {before!r} -> {after!r}")
    if args.json:
        args.json.write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return 1 if any(r["flagged_twins"] for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
