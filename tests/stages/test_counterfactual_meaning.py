"""Counterfactual twins that never change meaning: case by grammar, rows naming a person skipped (English and
Chinese), titles and other unpaired gendered words never left beside a swapped pronoun, sex-specific rows skipped;
and bench/counterfactual_check.py, which reads sampled twins of public sets by rules of its own, flags nothing on
the excerpts in tests/fixtures/layouts/ (sources in its README.md)."""

from pathlib import Path

import pytest

from bench.counterfactual_check import _pairs, check_file, flags
from r1lib.data.counterfactual import Counterfactual
from r1lib.data.records import make_record
from r1lib.data.terms import TermPairs
from tests.conftest import ROOT

PAIRS = TermPairs.load(ROOT / "data" / "debias" / "term_pairs.csv")
LAYOUTS = ROOT / "tests" / "fixtures" / "layouts"


def rec(prompt: str, answer: str = "Yes.") -> dict:
    body = {"system": "", "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
            "reasoning": None}  # fmt: skip
    return make_record(body, "rows.jsonl", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # The issue's GSM8K story, names left out: object "her" is "him", never "his".
        (
            "She loses 20% of them. Then a friend sees her and gives her double the amount.",
            "He loses 20% of them. Then a friend sees him and gives him double the amount.",
        ),
        ("The girl gave her friends a cake.", "The boy gave his friends a cake."),
        ("She spent 2/3 of her $150.", "He spent 2/3 of his $150."),
        ("This will cost her $10.", "This will cost him $10."),
        ("The book is his.", "The book is hers."),
        ("He made her happy.", "She made him happy."),
        # Dollar amounts are no formula: both "man's" are swapped, not one.
        (
            "If 1/10 of the man's lot is $460, then the man's land is worth $4600.",
            "If 1/10 of the woman's lot is $460, then the woman's land is worth $4600.",
        ),
    ],
)
def test_pronouns_take_the_case_their_grammar_needs(text, expected):
    twin, why = Counterfactual(PAIRS).twin(rec(text))
    assert why is None and twin["messages"][0]["content"] == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Natalia sold clips to 48 of her friends.", "named_person"),
        ("Once there was a young girl named Emily; she liked to sing.", "named_person"),
        ("John and his wife went to the market.", "named_person"),
        ("How many marbles does Baez have after she lost them?", "named_person"),
        ("允礼他不是外人。", "named_person"),
        ("输入：John 今年 35 岁，他住在纽约。", "named_person"),
        ("TJ ran a 10K race. She ran the first half in 20 minutes.", "named_person"),
        ("LaKeisha is mowing lawns. She charges $.10 a square foot.", "named_person"),
        ("Méliès bought 2 kg of meat. She has $180.", "named_person"),
        ("Jo-Bob hopped into the balloon, and he pulled the chain.", "named_person"),
        ("Asia bought a dress on sale. What did she pay?", "named_person"),
        ("The young prince returned to her kingdom.", "unpaired_gendered"),
        ("我哥哥说他会来。", "unpaired_gendered"),
        ("She is pregnant and tired.", "sex_specific"),
        ("他的前列腺有问题。", "sex_specific"),
        ("He heard her song at noon.", "ambiguous_case"),  # her song (his) or her sing (him)? a verb before it
    ],
)
def test_rows_whose_twin_could_change_meaning_get_none(text, reason):
    assert Counterfactual(PAIRS).twin(rec(text)) == (None, reason)


def test_places_and_labels_are_no_names():
    twin, why = Counterfactual(PAIRS).twin(rec("The king read a story about Spain. Answer as (Subject, Object)."))
    assert why is None and twin["messages"][0]["content"].startswith("The queen read")


def test_the_check_flags_what_the_issue_found():
    partners = _pairs()
    kinds = lambda a, b: {k for k, _ in flags(a, b, partners)}  # noqa: E731
    assert kinds("a friend sees her and gives her double", "a friend sees him and gives his double") == {"case"}
    assert kinds("a young girl named Emily", "a young boy named Emily") == {"named_person"}
    assert kinds("the young prince returned to her kingdom", "the young prince returned to his kingdom") == {
        "unpaired_gendered"
    }
    assert kinds("he sold his car", "she sold her truck") == {"beyond_pair"}
    assert kinds("允礼他不是外人", "允礼她不是外人") == {"named_person"}
    for named in ("TJ ran a race. She ran", "LaKeisha is mowing. She charges", "Méliès bought meat. She paid"):
        assert kinds(named, named.replace("She", "He")) == {"named_person"}, named


@pytest.mark.parametrize(
    "name",
    [
        "gsm8k_train_excerpt.jsonl",
        "llamafactory_alpaca_en_counterfactual_excerpt.json",
        "llamafactory_alpaca_zh_counterfactual_excerpt.json",
    ],
)
def test_no_twin_of_the_public_excerpts_is_flagged(name):
    result = check_file(str(LAYOUTS / name), sample=1000, seed=0)
    assert result["twins"] >= 5 and result["sampled"] == result["twins"]
    assert result["flagged_twins"] == 0, result["examples"]


def test_the_check_runs_as_a_script(tmp_path, capsys):
    from bench.counterfactual_check import main

    assert main([str(LAYOUTS / "gsm8k_train_excerpt.jsonl"), "--json", str(tmp_path / "out.json")]) == 0
    assert "0 flagged" in capsys.readouterr().out and Path(tmp_path / "out.json").exists()
