"""Preference rows in the data stages of a preference run (train.method dpo, orpo, kto): validate accepts the rows
the method trains on and refuses the rest with a reason that names the setting; dedup compares both answers and
holds out pairs when the test rows have none; augment never rewrites them; debias blocks on every answer; tokenize
writes them as pair (or KTO) rows beside the SFT rows of the same split."""

from __future__ import annotations

import json

from conftest import r1, write_lines

from r1lib.config import AugmentConfig, DedupConfig, TokenizeConfig
from r1lib.data.preference import normalize_preference, preference_record
from r1lib.data.row_rules import RowRules
from tasks.validate import validate_file, validate_input

DPO = RowRules(preference_method="dpo", preference_kinds=("pair",))
PAIR = {"prompt": "Which topic: cat and owl?", "chosen": r1("Both are animals.", "Animals."), "rejected": "Colors."}
SFT = {"instruction": "Which topic: red and blue?", "output": "Colors."}
LABELLED = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "label": True}
HALF_PAIR = {"prompt": "Which topic: one and two?", "chosen": "Numbers."}  # no rejected answer


def validated(tmp_path, split: str, rows: list, rules: RowRules = DPO):
    path = write_lines(tmp_path / f"{split}.jsonl", rows)
    result = validate_input(0, split, str(path), 100_000, 2**20, 100, tmp_path / "out", [str(tmp_path)], rules)
    accepted = [json.loads(line) for s in result.shards for line in open(s.path, encoding="utf-8")]
    quarantined = [json.loads(line) for line in open(result.quarantine, encoding="utf-8")]
    assert result.report.accepted + result.report.quarantined == len(rows) == len(accepted) + len(quarantined)
    return accepted, quarantined


def test_a_dpo_run_accepts_pairs_and_refuses_every_other_training_row_with_the_setting_that_fixes_it(tmp_path):
    accepted, quarantined = validated(tmp_path, "train", [PAIR, SFT, LABELLED, HALF_PAIR])
    assert [(r["preference"], r["messages"], r["chosen"], r["rejected"]) for r in accepted] == [
        ("pair", [{"role": "user", "content": PAIR["prompt"]}], PAIR["chosen"], "Colors.")
    ]
    assert {q["reason"]: q["line"] for q in quarantined} == {"sft_row": 2, "preference_label": 3, "missing_field": 4}
    messages = {q["reason"]: q["message"] for q in quarantined}
    assert "train.method=dpo" in messages["sft_row"] and "train.init_adapter" in messages["sft_row"]
    assert "--set train.method=kto" in messages["preference_label"]
    assert "rejected" in messages["missing_field"] and "train.jsonl:4" in messages["missing_field"]


def test_held_out_rows_keep_both_kinds_and_replay_refuses_pairs(tmp_path):
    accepted, quarantined = validated(tmp_path, "test", [PAIR, SFT])
    assert [r.get("preference") for r in accepted] == ["pair", None] and not quarantined
    accepted, quarantined = validated(tmp_path, "replay", [PAIR, SFT])
    assert len(accepted) == 1 and [q["reason"] for q in quarantined] == ["preference_data"]


def test_an_sft_run_refuses_preference_rows_naming_the_preference_method(tmp_path):
    path = write_lines(tmp_path / "prefs.jsonl", [PAIR, LABELLED])
    accepted, quarantined, _ = validate_file(path, max_chars=100_000)
    assert accepted == [] and [q["reason"] for q in quarantined] == ["preference_data"] * 2
    assert "--set train.method=dpo" in quarantined[0]["message"]
    assert "--set train.method=kto" in quarantined[1]["message"]


def test_answers_that_are_whole_conversations_do_not_repeat_the_prompt():
    # Firefly's / UltraFeedback's layout: chosen and rejected carry the prompt; messages repeats the chosen one.
    turn = {"role": "user", "content": "Draw daily?"}
    row = {"prompt": "Draw daily?", "chosen": [turn, {"role": "assistant", "content": "Yes."}],
           "rejected": [turn, {"role": "assistant", "content": "No."}],
           "messages": [turn, {"role": "assistant", "content": "Yes."}], "score_chosen": 8.0}  # fmt: skip
    normalized = normalize_preference(row)
    assert normalized["prompt"] == [turn] and normalized["chosen"]["content"] == "Yes."


def record(row: dict, line: int = 1) -> dict:
    return preference_record(normalize_preference(row), "pairs.jsonl", line)


def test_augment_leaves_preference_rows_alone_and_draws_their_replay_rows():
    import random

    from tasks.augment import augment_chunks

    pairs = [record(PAIR, 1), record({**PAIR, "rejected": "Numbers."}, 2)]
    replay = [{"id": "r", "messages": [], "system": ""}]
    cfg = AugmentConfig(prompt_variants=2, replay_ratio=0.5, text_variants=["whitespace"])
    out = [r for chunk in augment_chunks(pairs, 2, replay, cfg, ["Q: {instruction}"], random.Random(0)) for r in chunk]
    # no variant of a pair; one general row (replay_ratio x 2 pairs), the SFT loss of train.replay_weight trains it
    assert out == [*pairs, {**replay[0], "origin": "replay", "parent": "r"}]


def test_debias_blocks_a_pair_whose_rejected_answer_holds_a_blocked_term():
    from r1lib.data.terms import compile_terms
    from tasks.debias import debias_rows

    blocked_pair = record({**PAIR, "rejected": "Slurword colors."})
    kept, blocked, _, _ = debias_rows([record(PAIR), blocked_pair], compile_terms(["slurword"]), None)
    assert kept == [record(PAIR)] and [(b["field"], b["reason"]) for b in blocked] == [("rejected", "blocked_term")]


def test_dedup_tells_pairs_of_one_prompt_apart_and_holds_out_pairs_when_the_test_rows_have_none():
    from tasks.dedup import dedup

    prompts = [f"Which topic: item {k} and thing {k * 7}?" for k in range(60)]
    pairs = [record({"prompt": p, "chosen": "Things.", "rejected": "Colors."}, k) for k, p in enumerate(prompts, 1)]
    second = record({"prompt": prompts[0], "chosen": "Things.", "rejected": "Numbers, clearly not things at all."})
    cfg = DedupConfig(near=False, preference_test_fraction=0.2)
    train, test, dropped, report = dedup([*pairs, second], [], cfg)
    held = {r["messages"][0]["content"] for r in test}
    assert 0 < report.held_out_pairs == len(test) < 30 and not held & {r["messages"][0]["content"] for r in train}
    assert second in train or second in test  # a second pair of one prompt is no duplicate
    assert not [d for d in dropped if d["reason"] == "duplicate"]
    test_pair = pairs[0] | {"source": {"file": "test.jsonl", "line": 1}}
    _, _, _, with_test_pair = dedup(pairs, [test_pair], cfg)
    assert with_test_pair.held_out_pairs == 0


def test_tokenize_writes_preference_rows_beside_the_sft_rows_of_a_split(tokenizer, tmp_path):
    from datasets import load_from_disk

    from r1lib.data.shards import Shard
    from tasks.tokenize import merge_tokenized, tokenize_shard

    sft = {"id": "s" * 16, "system": "", "messages": [{"role": "user", "content": "Red and blue?"},
           {"role": "assistant", "content": "Colors."}], "reasoning": None, "source": {"file": "t", "line": 3},
           "origin": "original"}  # fmt: skip
    # validate refuses a pair with equal sides (equal_sides); tokenize still drops one its rendering makes equal
    equal = {**record(PAIR, 2), "id": "e" * 16, "rejected": PAIR["chosen"]}
    shard = write_lines(tmp_path / "records.jsonl", [record(PAIR), equal, sft])
    cfg = TokenizeConfig(max_dropped_fraction=0.5)
    for layout, rows, columns in (("pairs", 1, "rejected_ids"), ("unpaired", 2, "label")):
        part = tokenize_shard(tokenizer, Shard.of(shard), cfg, tmp_path / layout / "part", layout)
        result = merge_tokenized([part], tmp_path / layout, "train", cfg)
        assert (result.rows_out, result.preference.rows_in, result.preference.rows) == (1, 2, rows)
        assert result.preference.dropped == {"equal_sides": 1}
        assert columns in load_from_disk(result.preference.dataset).column_names
        quarantine = [json.loads(line) for line in open(result.quarantine, encoding="utf-8")]
        assert [(q["line"], q["reason"]) for q in quarantine] == [(2, "equal_sides")]
