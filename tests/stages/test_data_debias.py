"""Debiasing that never rewrites facts: by default it measures; switched on, its twins change only ordinary gendered
words about unnamed people, and a person can review a sample of them.

Public rows: tests/fixtures/shapes/*_gender_term_traps.json (selected rows of LLaMA-Factory's alpaca demos and of
Mol-Instructions, README.md there). The Chinese sample and the quiz rows below are written here.
"""

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from r1lib.config import DebiasConfig
from r1lib.data.counterfactual import Counterfactual, named_person
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from r1lib.data.terms import TermPairs, load_blocklist, segment
from r1lib.errors import DataValidationError
from r1lib.io import read_jsonl, write_jsonl
from tasks.debias import debias, debias_file
from tasks.validate import validate_file
from tests.conftest import ROOT

SHAPES = ROOT / "tests" / "fixtures" / "shapes"
PAIRS = TermPairs.load(Path("data/debias/term_pairs.csv"))
PROTECTED = load_blocklist(Path("data/debias/protected_phrases.txt"))
ON = DebiasConfig(counterfactual=True)
TERMS = {t for row in PAIRS.rows for t in (row["term_a"], row["term_b"])}


def rec(prompt: str, answer: str, reasoning: str | None = None, line: int = 1) -> dict:
    output = f"<think>\n{reasoning}\n</think>\n\n{answer}" if reasoning else answer
    return make_record(normalize({"instruction": prompt, "output": output}), "own.jsonl", line)


def changed_words(original: str, twin: str) -> list[tuple[str, str]]:
    """The (original, twin) words that differ, Chinese segmented: what a reviewer would see changed."""

    def words(text: str) -> list[str]:
        return [w for w, _, _ in segment(text) if w.strip()]

    a, b = words(original), words(twin)
    assert len(a) == len(b), (original, twin)  # a swap replaces words one for one
    return [(x, y) for x, y in zip(a, b) if x != y]


def assert_only_plain_term_swaps(pairs_file: Path) -> int:
    """Every change in the sampled pairs is one listed term for its partner, lower case or sentence-initial, not
    inside a longer word, never a title before a name; returns how many pairs were checked."""
    rows = read_jsonl(pairs_file)
    for row in rows:
        for change in row["changes"]:
            for old, new in changed_words(change["original"], change["twin"]):
                assert old.lower() in TERMS and new.lower() in TERMS, (old, new, change)
            assert not named_person(change["original"]), change
    return len(rows)


TRAP_FILES = sorted(p.name for p in SHAPES.glob("*_gender_term_traps.json"))


@pytest.mark.parametrize("name", TRAP_FILES)
def test_by_default_debias_rewrites_nothing_and_measures(name, tmp_path):
    records, _, _ = validate_file(SHAPES / name, max_chars=100_000)
    write_jsonl(tmp_path / "in.jsonl", records)
    result = debias_file(tmp_path / "in.jsonl", DebiasConfig(), tmp_path / "out")
    assert read_jsonl(Path(result.shards[0].path)) == records  # byte for byte the same rows
    assert result.counterfactuals == 0 and result.pairs is None and not result.counterfactual
    b = result.balance[0]
    assert (b.before_a, b.before_b) == (b.after_a, b.after_b)


@pytest.mark.parametrize("name", TRAP_FILES)
def test_twins_of_public_trap_rows_leave_names_titles_terms_and_words_alone(name):
    swapper = Counterfactual(PAIRS, PROTECTED)
    records, _, _ = validate_file(SHAPES / name, max_chars=100_000)
    twins = {r["source"]["line"]: swapper.twin(r) for r in records}
    made = {line: twin for line, (twin, _) in twins.items() if twin is not None}
    if name == "molinstructions_cdi_gender_term_traps.json":
        # Only row 179's "His renal function" (a patient's, an ordinary pronoun) is swapped; "His bundle" (anatomy,
        # rows 6 and 179) and "King Fahad National Guard Hospital" are not.
        assert list(made) == [2]
        original = records[1]["messages"][0]["content"]
        assert changed_words(original, made[2]["messages"][0]["content"]) == [("His", "Her")]
        assert twins[3][1] == "named_person"
    else:
        assert made == {}
    why = {line: reason for line, (_, reason) in twins.items()}
    if name == "llamafactory_alpaca_en_gender_term_traps.json":
        # Queen Elizabeth II, King George III, King Charles I, 'Mr. Lincoln': named; daughter cells: protected.
        assert Counter(why.values()) == {"named_person": 4, "all_protected": 1, None: 1}
    if name == "llamafactory_alpaca_zh_gender_term_traps.json":
        assert set(why.values()) == {None}  # 他人, 其他, 其他人, 他们, 吉他: no 他 as a word at all


def test_terms_inside_chinese_words_are_never_matched_or_swapped():
    text = "其他人都来了，他们说他人的事情。他弹吉他，她唱歌。"
    assert PAIRS.swap_text(text) == "其他人都来了，他们说他人的事情。她弹吉他，他唱歌。"
    assert [g for g in PAIRS.found(text)] == [("male/female", "a"), ("male/female", "b")]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Who crossed the Rubicon in 49 BC?\n\nJulius Caesar. He was stabbed to death in 44 BC.", "named_person"),
        ("Who ruled Britain in 1776?\n\nKing George III; he lost the American colonies.", "named_person"),
        ("李白是唐代诗人，他写了《静夜思》。", "named_person"),
        ("Sir Isaac Newton published his Principia in 1687.", "named_person"),
    ],
)
def test_a_row_about_a_named_person_gets_no_twin(text, reason):
    prompt, _, answer = text.partition("\n\n")
    twin, why = Counterfactual(PAIRS, PROTECTED).twin(rec(prompt, answer or "好。"))
    assert (twin, why) == (None, reason)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('He said "his plan works" to her.', 'She said "his plan works" to him.'),  # quoted text kept
        ("He ran `he --help` and $he = 1$.", "She ran `he --help` and $he = 1$."),  # code, formula
        ("He studied sister chromatid exchange.", "She studied sister chromatid exchange."),  # protected phrase
        ("The His-613 residue; he measured it.", "The His-613 residue; she measured it."),  # symbol
        ("Cys, His, or Lys residues; he found them.", "Cys, His, or Lys residues; she found them."),
        ("我哥哥说他会来，其他人不来。", "我哥哥说她会来，其他人不来。"),  # 他 as a word; 其他 untouched
    ],
)
def test_protected_spans_and_symbols_are_kept(text, expected):
    assert Counterfactual(PAIRS, PROTECTED).swap_text(text)[0] == expected


def test_reasoning_is_left_alone_by_default():
    record = rec("Is my brother taller?", "Yes, he is.", reasoning="He is 180 cm, the other 170 cm.")
    assert Counterfactual(PAIRS).twin(record) == (None, "terms_in_reasoning")
    twin, _ = Counterfactual(PAIRS, swap_reasoning=True).twin(record)
    assert twin["reasoning"] == "She is 180 cm, the other 170 cm."
    untouched = rec("Is my brother taller?", "Yes, he is.", reasoning="180 cm against 170 cm.")
    twin, _ = Counterfactual(PAIRS).twin(untouched)
    assert twin["messages"][0]["content"] == "Is my sister taller?" and twin["reasoning"] == untouched["reasoning"]


CHINESE_SAMPLE = [
    ("我哥哥昨天读了一本书，他觉得很好看。这句话讲的是什么？", "这句话讲的是读书。"),
    ("她和她的妈妈去了市场。这句话讲的是什么？", "这句话讲的是购物。"),
    ("其他人都走了，他们还在等。这句话讲的是什么？", "这句话讲的是等待。"),
    ("他弹吉他弹得很好。这句话讲的是什么？", "这句话讲的是音乐。"),
    ("王小明说他明天来。这句话讲的是什么？", "这句话讲的是计划。"),
    ("他人的东西不要拿。这句话讲的是什么？", "这句话讲的是规矩。"),
]


def test_pairs_written_for_review_hold_only_plain_swaps_on_sample_and_chinese_data(tmp_path):
    sample, _, _ = validate_file("data/sample/train.jsonl", max_chars=100_000)
    chinese = [rec(q, a, line=n) for n, (q, a) in enumerate(CHINESE_SAMPLE, 1)]
    for name, records in (("sample", sample), ("chinese", chinese)):
        write_jsonl(tmp_path / f"{name}.jsonl", records)
        result = debias_file(
            tmp_path / f"{name}.jsonl", DebiasConfig(counterfactual=True, sample_pairs=1000), tmp_path / name
        )
        assert result.counterfactuals > 0 and Path(result.pairs).name == "counterfactual_pairs.jsonl"
        assert assert_only_plain_term_swaps(Path(result.pairs)) == result.counterfactuals
    twins = {r["parent"]: r for r in read_jsonl(tmp_path / "chinese" / "counterfactual_pairs.jsonl")}
    by_line = {r["source"]["line"]: r["id"] for r in chinese}
    # 3 and 6: no 他 word; 5: 王小明 is named; 1 and 2: 哥哥 and 妈妈 have no partner in the term pairs, so "我哥哥
    # ... 她" would contradict itself.
    assert set(twins) == {by_line[4]}
    assert twins[by_line[4]]["changes"][0]["twin"].startswith("她弹吉他")
    report = json.loads((tmp_path / "chinese" / "report.json").read_text())
    assert report["no_twin"] == {"named_person": 1, "unpaired_gendered": 2}


def test_counterfactual_on_still_balances_the_sample_data(tmp_path):
    records, _, _ = validate_file("data/sample/train.jsonl", max_chars=100_000)
    out, _, balance = debias(records, ON)
    assert balance[0].ratio_before > 2 and balance[0].ratio_after <= 1.1
    off, _, measured = debias(records, DebiasConfig())
    assert measured[0].ratio_after == measured[0].ratio_before > 2 and len(off) < len(out)


def test_blocked_share_past_the_limit_fails_naming_the_setting(tmp_path):
    records = [rec("You idiot, 1 + 1?", "2", line=1), rec("2 + 2?", "4", line=2)]
    write_jsonl(tmp_path / "in.jsonl", records)
    with pytest.raises(DataValidationError, match=r"debias\.max_blocked_fraction=0\.1") as info:
        debias_file(tmp_path / "in.jsonl", DebiasConfig(), tmp_path / "out")
    assert "1 of 2" in str(info.value)
    assert debias_file(tmp_path / "in.jsonl", DebiasConfig(max_blocked_fraction=0.5), tmp_path / "ok").blocked == 1


def test_review_pairs_name_their_source(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [rec("My brother ran.", "He won.", line=7)])
    result = debias_file(tmp_path / "in.jsonl", ON, tmp_path / "out")
    (pair,) = read_jsonl(Path(result.pairs))
    assert pair["source"] == {"file": "own.jsonl", "line": 7}
    assert [(c["field"], c["twin"]) for c in pair["changes"]] == [
        ("messages[0]", "My sister ran."),
        ("messages[1]", "She won."),
    ]
    assert re.fullmatch(r"[0-9a-f]{16}", pair["twin"])
