"""Preference pairs are tokenized with the R1 template on both sides: one BOS, the model's own generation prompt,
the think policy applied to chosen and rejected alike; equal and over-long pairs are dropped with a reason and
limited by tokenize.max_dropped_fraction. Checked by decoding the rows."""

from __future__ import annotations

import pytest

from tests.conftest import r1


def record(chosen, rejected, line=1, prompt="Which topic: cat and owl?"):
    return {"system": "", "messages": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected,
            "source": {"file": "pairs.jsonl", "line": line}}  # fmt: skip


CHOSEN = r1("Both are animals.", "Animals.")
REJECTED = r1("Both are colors.", "Colors.")


def test_one_bos_and_the_models_own_prompt_on_both_sides(tokenizer):
    from r1lib.config import TokenizeConfig
    from r1lib.data.chat_template import render_prompt
    from r1lib.data.preference_tokens import decoded, tokenize_pairs

    rows, quarantined, dropped = tokenize_pairs(tokenizer, [record(CHOSEN, REJECTED)], TokenizeConfig())
    assert len(rows) == 1 and not quarantined and not dropped
    row = rows[0]
    expected_prompt = render_prompt(tokenizer, {**record(CHOSEN, REJECTED), "messages": [
        {"role": "user", "content": "Which topic: cat and owl?"}, {"role": "assistant", "content": ""}]})  # fmt: skip
    for side, reasoning, answer in (
        ("chosen", "Both are animals.", "Animals."),
        ("rejected", "Both are colors.", "Colors."),
    ):
        ids = row["prompt_ids"] + row[f"{side}_ids"]
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
        text = decoded(tokenizer, row, side)
        assert text["prompt"] == expected_prompt and text["prompt"].endswith("<｜Assistant｜><think>\n")
        assert text["shown"] == "" and text["scored"] == f"{reasoning}\n</think>\n\n{answer}<｜end▁of▁sentence｜>"


@pytest.mark.parametrize("policy", ["mask", "drop"])
def test_the_think_policy_applies_to_chosen_and_rejected_alike(tokenizer, policy):
    from r1lib.config import TokenizeConfig
    from r1lib.data.preference_tokens import decoded, tokenize_pairs

    rows, _, _ = tokenize_pairs(tokenizer, [record(CHOSEN, REJECTED)], TokenizeConfig(think_in_loss=policy))
    for side, reasoning, answer in (
        ("chosen", "Both are animals.", "Animals."),
        ("rejected", "Both are colors.", "Colors."),
    ):
        text = decoded(tokenizer, rows[0], side)
        assert text["scored"] == f"</think>\n\n{answer}<｜end▁of▁sentence｜>"
        assert text["shown"] == (f"{reasoning}\n" if policy == "mask" else "")


def test_equal_and_too_long_pairs_are_dropped_with_a_reason_and_limited(tokenizer):
    from r1lib.config import TokenizeConfig
    from r1lib.data.preference_tokens import check_dropped_pairs, tokenize_pairs
    from r1lib.errors import DataValidationError

    records = [
        record(CHOSEN, REJECTED, 1),
        record(
            r1("Both are animals.", "Animals."), r1("Other thoughts.", "Animals."), 2
        ),  # equal once reasoning is dropped
        record(CHOSEN, r1("Both are colors.", "Colors. " * 80), 3),
        record(CHOSEN, CHOSEN, 4),
    ]
    cfg = TokenizeConfig(think_in_loss="drop", max_seq_length=128, max_dropped_fraction=0.8)
    rows, quarantined, dropped = tokenize_pairs(tokenizer, records, cfg)
    assert len(rows) == 1 and dict(dropped) == {"equal_sides": 2, "too_long": 1}
    assert [(q["line"], q["reason"]) for q in quarantined] == [(2, "equal_sides"), (3, "too_long"), (4, "equal_sides")]
    assert "pairs.jsonl" in quarantined[1]["message"] and "tokenize.max_seq_length=128" in quarantined[1]["message"]
    check_dropped_pairs(len(records), dropped, cfg, "train", "q.jsonl")  # 75% <= 80%
    with pytest.raises(
        DataValidationError, match=r"3 of 4 .*2 equal_sides, 1 too_long.*tokenize.max_dropped_fraction=0.5"
    ):
        check_dropped_pairs(len(records), dropped, cfg.model_copy(update={"max_dropped_fraction": 0.5}), "train", "q")
    with pytest.raises(DataValidationError, match="tokenize.truncation=fail"):
        tokenize_pairs(tokenizer, records[2:3], cfg.model_copy(update={"truncation": "fail"}))
    cut, _, _ = tokenize_pairs(tokenizer, records[2:3], cfg.model_copy(update={"truncation": "truncate"}))
    assert len(cut[0]["prompt_ids"]) + len(cut[0]["rejected_ids"]) == 128


def test_kto_rows_unpaired_or_split_from_pairs(tokenizer):
    from r1lib.config import TokenizeConfig
    from r1lib.data.preference_tokens import UNPAIRED_COLUMNS, tokenize_pairs, tokenize_unpaired, unpair

    pairs, _, _ = tokenize_pairs(tokenizer, [record(CHOSEN, REJECTED)], TokenizeConfig())
    split = unpair(pairs)
    assert [r["label"] for r in split] == [True, False] and split[1]["completion_ids"] == pairs[0]["rejected_ids"]
    kto_record = {**record(CHOSEN, REJECTED), "completion": REJECTED, "label": False}
    rows, _, _ = tokenize_unpaired(tokenizer, [kto_record], TokenizeConfig())
    assert set(rows[0]) == set(UNPAIRED_COLUMNS) and rows[0] == split[1]
