"""Text-level augmentation that keeps answers correct; counterfactual swaps on tricky casing, punctuation, scripts."""

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import r1
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lib.config import AugmentConfig, DebiasConfig
from r1lib.data.counterfactual import Counterfactual
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from r1lib.data.terms import TermPairs, compile_terms, load_blocklist, segment
from r1lib.io import write_jsonl
from tasks.augment import (
    augment,
    expand,
    load_templates,
    punctuation_variant,
    question_first_variant,
    shard_rng,
    text_variant,
    whitespace_variant,
)
from tasks.debias import counterfactual, debias, debias_file, debias_rows

PAIRS = TermPairs.load(Path("data/debias/term_pairs.csv"))


def rec(prompt: str, output: str, line: int = 1) -> dict:
    return make_record(normalize({"instruction": prompt, "output": output}), "t.jsonl", line)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ann  has 3 apples.   How many?  ", "Ann has 3 apples. How many?"),
        ("line one   \n  indented? no: trailing   \n", "line one\n  indented? no: trailing"),
        ("def f():\n    return  1", "def f():\n    return  1"),  # code: whitespace can be meaning
    ],
)
def test_whitespace_variant(text, expected):
    assert whitespace_variant(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("他有三个苹果。他有几个？", "他有三个苹果.他有几个?"),
        ("天空是什么颜色?", "天空是什么颜色？"),
        ("“Quoted” and ‘single’", "\"Quoted\" and 'single'"),
        ("Plain ASCII, nothing to do.", "Plain ASCII, nothing to do."),
    ],
)
def test_punctuation_variant(text, expected):
    assert punctuation_variant(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Ann has 3 apples and buys 2. How many apples does she have?",
            "How many apples does she have? Ann has 3 apples and buys 2.",
        ),
        ("他有三个苹果。他有几个？", "他有几个？他有三个苹果。"),
        ("What is 3.5 + 1?", "What is 3.5 + 1?"),  # no context sentence
        ("Dr. Smith has how many?", "Dr. Smith has how many?"),  # an abbreviation is not a sentence end
        (
            "Mr. Lee has 3 and Mrs. Lee has 2. How many in total?",
            "How many in total? Mr. Lee has 3 and Mrs. Lee has 2.",
        ),
        ("Is it? Then go. Why?", "Is it? Then go. Why?"),  # the context holds a question: leave it
    ],
)
def test_question_first_variant(text, expected):
    assert question_first_variant(text) == expected


def test_text_variants_keep_answer_and_reasoning_and_record_origin_and_parent():
    record = rec("Tom has 2 pens and gets 3 more. How many pens now?", r1("2 + 3 = 5.", "5"))
    twin = text_variant(record, "question_first")
    assert twin["messages"][0]["content"] == "How many pens now? Tom has 2 pens and gets 3 more."
    assert twin["messages"][1] == record["messages"][1] and twin["reasoning"] == record["reasoning"]
    assert (twin["origin"], twin["parent"]) == ("text_variant:question_first", record["id"]) and twin["id"] != record[
        "id"
    ]
    assert record["messages"][0]["content"].startswith("Tom")  # the parent is untouched
    assert text_variant(record, "punctuation") is None  # nothing to change: no copy


def test_augment_adds_text_variants_beside_templates():
    records = [rec(f"Ann has {i} cats. How many cats?", str(i), i + 1) for i in range(10)]
    cfg = AugmentConfig(
        prompt_variants=1, replay_ratio=0, text_variants=["question_first", "whitespace"], template_rows="all"
    )
    out = augment(records, [], cfg, load_templates(Path(cfg.templates_path)))
    origins = Counter(r["origin"].split(":")[0] for r in out)
    assert origins == {"original": 10, "prompt_template": 10, "text_variant": 10}
    assert all(r.get("parent") in {x["id"] for x in records} for r in out if r["origin"] != "original")
    rng, templates = shard_rng(cfg, 0), load_templates(Path(cfg.templates_path))
    chunked = [row for chunk in (records[:4], records[4:]) for row in expand(chunk, cfg, templates, rng)]
    assert sorted(r["id"] for r in chunked) == sorted(r["id"] for r in out)  # chunk by chunk draws what one call draws
    assert [r["id"] for r in augment(records, [], cfg, templates, index=1)] != [r["id"] for r in out]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("HE said no.", "SHE said no."),
        ("He's here; she's not.", "She's here; he's not."),
        ("his/her book", "her/his book"),
        ("her/his", "his/her"),
        ("him/her", "her/him"),
        ("\"He\" asked, 'she' answered.", "\"She\" asked, 'he' answered."),
        ("(his) [her] {him}", "(her) [him] {her}"),  # a bare "her" reads as an object
        ("she—he…HIM!", "he—she…HER!"),
        ("I saw her. Her book is red.", "I saw him. His book is red."),
        ("He gave her the book, and her brother thanked him.", "She gave him the book, and his sister thanked her."),
        ("The King and the QUEEN", "The Queen and the KING"),
        ("Mr Brown met Mrs Brown.", "Mrs Brown met Mr Brown."),
        ("himself, herself", "herself, himself"),
        ("the heir, their hen, shed, hermit, other", "the heir, their hen, shed, hermit, other"),  # whole words only
        ("he_said and he2", "he_said and he2"),
        ("他说她会来。", "她说他会来。"),
        ("Er sagt, sie kommt.", "Sie sagt, er kommt."),
        ("Élise et HE", "Élise et SHE"),
    ],
)
def test_counterfactual_swap_on_tricky_casing_and_punctuation(text, expected):
    assert PAIRS.swap_text(text) == expected


def test_swap_twice_is_identity_where_unambiguous():
    for text in ["HE said his/her book", "The boys and the girls", "He's the king."]:
        assert PAIRS.swap_text(PAIRS.swap_text(text)) == text


def test_counterfactual_twin_swaps_every_field_and_records_parent():
    record = rec("My brother asked his teacher.", r1("He means his teacher.", "He asked his teacher."))
    assert counterfactual(record, PAIRS) is None  # by default the reasoning is never rewritten: no twin
    twin, why = Counterfactual(PAIRS, swap_reasoning=True).twin(record)
    assert twin["messages"][0]["content"] == "My sister asked her teacher."
    assert twin["reasoning"] == "She means her teacher."
    assert twin["messages"][1]["content"] == "She asked her teacher."
    assert (twin["origin"], twin["parent"]) == ("counterfactual", record["id"])
    assert record["messages"][0]["content"] == "My brother asked his teacher."
    assert counterfactual(rec("The cat sat.", "ok"), PAIRS) is None


def test_blocklist_word_boundaries_and_cjk_substrings():
    pattern = compile_terms(["idiot", "白痴", "vollidiot"])
    assert pattern.search("You IDIOT!") and pattern.search("'idiot'") and pattern.search("他是白痴吗")
    assert not pattern.search("idiotic idiots") and not pattern.search("Vollidioten")
    assert pattern.search("Du Vollidiot.").group(0) == "Vollidiot"


def test_debias_rows_chunks_add_up_to_the_whole_and_balance_is_measured(tmp_path):
    records = [
        rec("He and his brother ran.", "He won.", 1),
        rec("She ran.", "She won.", 2),
        rec("The idiot ran.", "ok", 3),
        rec("The cat ran.", "ok", 4),
    ]
    out, blocked, balance = debias(records, DebiasConfig(counterfactual=True, max_blocked_fraction=0.5))
    assert [b["line"] for b in blocked] == [3] and blocked[0]["reason"] == "blocked_term"
    assert len(out) == 3 + 2
    mf = balance[0]
    assert (mf.groups, mf.before_a, mf.before_b, mf.after_a, mf.after_b) == ("male/female", 4, 2, 6, 6)
    assert mf.ratio_before == 2.0 and mf.ratio_after == 1.0
    blocklist = compile_terms(["idiot"])
    a = debias_rows(records[:2], blocklist, PAIRS, True)
    b = debias_rows(records[2:], blocklist, PAIRS, True)
    assert a[2] + b[2] == Counter({("male/female", "a"): 4, ("male/female", "b"): 2})
    write_jsonl(tmp_path / "in.jsonl", records)
    result = debias_file(
        tmp_path / "in.jsonl", DebiasConfig(counterfactual=True, max_blocked_fraction=0.5), tmp_path / "out"
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["balance"][0]["ratio_after"] == 1.0 and result.blocked == 1


def test_imbalance_can_fail_the_stage(tmp_path):
    from r1lib.errors import DataValidationError

    write_jsonl(tmp_path / "in.jsonl", [rec("He ran.", "He won, his dog too.", 1)])
    with pytest.raises(DataValidationError, match="unbalanced"):
        debias_file(tmp_path / "in.jsonl", DebiasConfig(counterfactual=False, fail_on_imbalance=True), tmp_path / "o")


_PIECES = [
    "he",
    "He",
    "HIS",
    "her",
    "she",
    "idiot",
    "Idiots",
    "his/her",
    "mr",
    "Mrs.",
    "ſhe",
    "Kid",
    "ıdiot",
    "白痴",
    "他",
    "er",
    "sie",
    "the",
    "x_he",
    "he2",
    "é",
    " ",
    " ",
    ",",
    ".",
    "\n",
    "'",
    "(",
    "-",
    "ǅ",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=30).map("".join))
def test_term_shortcut_finds_exactly_what_the_pattern_finds(text):
    """The word-set shortcut of TermPattern (ASCII texts) answers what the full regex answers, on any text."""
    blocklist = compile_terms(load_blocklist(Path("data/debias/blocklist.txt")))
    for pattern in (blocklist, PAIRS.pattern):
        # The pair terms in CJK are the words segmentation finds; the blocklist's are substrings (in the pattern).
        words = [(s, e) for w, s, e in segment(text) if w in pattern.cjk_words] if pattern.cjk_words else []
        want = sorted([m.span() for m in pattern.pattern.finditer(text)] + words)
        assert [m.span() for m in pattern.finditer(text)] == want
        assert bool(pattern.search(text)) == bool(want)
    expected = tuple(PAIRS.group_of[PAIRS.term(m.group(0))] for m in PAIRS.pattern.finditer(text))
    assert TermPairs(PAIRS.rows).found(text) == expected
    if not PAIRS.pattern.cjk_words.intersection(text):
        assert PAIRS.swap_text(text) == PAIRS.pattern.pattern.sub(PAIRS.replacement, text)


def test_measured_imbalance_is_reported_at_info_not_as_a_warning(tmp_path, caplog):
    import logging

    write_jsonl(tmp_path / "in.jsonl", [rec("He ran.", "He won, his dog too.", 1)])
    with caplog.at_level(logging.INFO, logger="tasks.debias"):
        result = debias_file(tmp_path / "in.jsonl", DebiasConfig(counterfactual=False), tmp_path / "measured")
    assert result.balance[0].ratio_after > DebiasConfig().max_balance_ratio
    records = [r for r in caplog.records if "unbalanced" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.INFO] and "measured only" in records[0].getMessage()
