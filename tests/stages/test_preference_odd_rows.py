"""Preference rows that contradict themselves or each other (bench/attack4 on branch attack4, findings 5-8):
pairs of one prompt preferred both ways, also when only invisible characters tell them apart, leave dedup together
with a reason; equal sides are refused at validate naming the row and the field; a row-level prompt or system beside
conversations that say something else, a whole conversation beside chosen/rejected and a null side are refused
clearly; and a KTO row in a dpo run is named as one with train.method=kto."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import r1, write_lines

from r1lib.config import DedupConfig, TokenizeConfig
from r1lib.data.preference import normalize_preference, preference_record
from r1lib.data.preference_tokens import check_dropped_pairs
from r1lib.data.row_rules import RowRules
from r1lib.errors import DataValidationError
from tasks.dedup import dedup
from tasks.validate import validate_input

DPO = RowRules(preference_method="dpo", preference_kinds=("pair",))


def U(content: str) -> dict:
    return {"role": "user", "content": content}


def pair(prompt: str, chosen: str, rejected: str, line: int) -> dict:
    row = {"prompt": prompt, "chosen": r1("Think.", chosen), "rejected": r1("Think.", rejected)}
    return preference_record(normalize_preference(row), "pairs.jsonl", line)


def validated(tmp_path, rows: list, rules: RowRules = DPO) -> dict[int, dict]:
    """{line: quarantine entry} of a training file validated in a preference run (every row accounted for)."""
    path = write_lines(tmp_path / "train.jsonl", rows)
    result = validate_input(0, "train", str(path), 100_000, 2**20, 100, tmp_path / "out", [str(tmp_path)], rules)
    quarantined = [json.loads(line) for line in open(result.quarantine, encoding="utf-8")]
    assert result.report.accepted + result.report.quarantined == len(rows)
    return {q["line"]: q for q in quarantined}


def test_pairs_preferred_both_ways_for_one_prompt_are_both_quarantined_naming_each_other():
    rows = [
        pair("Swap me?", "good", "bad", 1),
        pair("Swap me?", "bad", "good", 2),  # the same pair the other way round
        pair("Swap me?", "good", "bad", 3),  # a repeat of row 1: it contradicts row 2 as well
        pair("Pick one?", "yes", "no", 4),
        pair("Pick\u200b one?", "no\u200d", "yes", 5),  # the other way round, told apart only by zero-width characters
        *[pair(f"Which is bigger, {k} or {k + 1}?", str(k + 1), str(k), k) for k in range(6, 12)],
    ]
    train, _, dropped, report = dedup(rows, [], DedupConfig(near=False, preference_test_fraction=0))
    assert report.reasons == {"contradictory_pair": 5}
    assert [r["source"]["line"] for r in train] == list(range(6, 12))
    by_line = {d["line"]: d for d in dropped}
    assert {line: by_line[line]["duplicate_of"]["line"] for line in by_line} == {1: 2, 2: 1, 3: 2, 4: 5, 5: 4}
    assert by_line[5]["message"] == "pairs.jsonl:5: prefers the other answer of the same prompt than pairs.jsonl:4"


def test_a_file_of_contradictory_pairs_fails_dedup_saying_what_to_delete(tmp_path):
    from r1lib.data.shards import Shard
    from r1lib.io import write_jsonl
    from tasks.dedup import dedup_files

    rows = [pair("Swap me?", "good", "bad", 1), pair("Swap me?", "bad", "good", 2), pair("Fine?", "yes", "no", 3)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataValidationError) as info:
        dedup_files([Shard.of(tmp_path / "train.jsonl")], [], DedupConfig(preference_test_fraction=0), tmp_path / "o")
    message = str(info.value)
    assert "'contradictory_pair': 2" in message and "keep the direction you mean and delete the other row" in message


def test_equal_sides_are_refused_at_validate_naming_the_row_and_the_field(tmp_path):
    answer = r1("add", "4")
    quarantined = validated(tmp_path, [
        {"prompt": "What is 2+2?", "chosen": answer, "rejected": answer},
        {"prompt": "What is 2+2?", "chosen": answer, "rejected": answer + "  \n"},  # only trailing whitespace
        {"prompt": "Zero width?", "chosen": r1("r", "a\u200b"), "rejected": r1("r", "a")},  # only a zero-width space
        {"prompt": "Case?", "chosen": r1("r", "Paris"), "rejected": r1("r", "paris")},  # a difference a reader sees
    ])  # fmt: skip
    assert {line: (q["reason"], q["field"]) for line, q in quarantined.items()} == {
        n: ("equal_sides", "rejected") for n in (1, 2, 3)
    }
    message = quarantined[3]["message"]
    assert message.startswith(f"{tmp_path / 'train.jsonl'}:3: 'chosen' and 'rejected' are the same answer")
    assert "zero-width" in message and "max_seq_length" not in message


def test_pairs_equal_only_without_their_reasoning_name_think_in_loss_not_the_sequence_length():
    with pytest.raises(DataValidationError) as info:
        check_dropped_pairs(4, Counter(equal_sides=2), TokenizeConfig(think_in_loss="drop"), "train", "q.jsonl")
    message = str(info.value)
    assert "tokenize.think_in_loss=keep" in message and "max_seq_length" not in message
    with pytest.raises(DataValidationError, match="raise tokenize.max_seq_length"):
        check_dropped_pairs(4, Counter(too_long=2), TokenizeConfig(), "train", "q.jsonl")


def test_odd_pair_rows_are_refused_saying_what_conflicts(tmp_path):
    def turns(system: str, answer: str) -> list[dict]:
        return [{"role": "system", "content": system}, U("Q?"), {"role": "assistant", "content": answer}]

    other = [U("other prompt")]
    quarantined = validated(tmp_path, [
        {"chosen": turns("S", "yes"), "rejected": turns("S", "no"), "system": "Row-level system"},
        {"prompt": [U("list prompt")], "chosen": [*other, {"role": "assistant", "content": "a"}],
         "rejected": [*other, {"role": "assistant", "content": "b"}]},
        {"prompt": "Both?", "chosen": "a", "rejected": "b",
         "messages": [U("Both?"), {"role": "assistant", "content": "a"}]},
        {"prompt": "Null rejected?", "chosen": "a", "rejected": None},
        {"chosen": turns("S", "yes"), "rejected": turns("S", "no"), "system": "S"},  # the same system twice: fine
    ])  # fmt: skip
    assert {line: (q["reason"], q["field"]) for line, q in quarantined.items()} == {
        1: ("conflicting_system", "system"),
        2: ("conflicting_prompt", "prompt"),
        3: ("role_order", "messages"),
        4: ("empty_field", "rejected"),
    }
    messages = {line: q["message"] for line, q in quarantined.items()}
    assert "'Row-level system'" in messages[1] and "'S'" in messages[1] and "keep one" in messages[1]
    assert "'list prompt'" in messages[2] and "'other prompt'" in messages[2]
    assert "'messages' ends with an assistant turn" in messages[3] and "give the prompt as 'prompt'" in messages[3]
    assert "field 'rejected' is null" in messages[4] and "missing" not in messages[4]


def test_a_kto_row_in_a_dpo_run_is_named_as_one_with_the_method_that_trains_it(tmp_path):
    quarantined = validated(tmp_path, [
        {"prompt": "label str?", "completion": r1("r", "a"), "label": "false"},
        {"prompt": "label odd?", "completion": r1("r", "a"), "label": "maybe"},
        {"prompt": "A pair?", "chosen": "yes", "rejected": "no"},
    ])  # fmt: skip
    assert {line: q["reason"] for line, q in quarantined.items()} == {1: "preference_label", 2: "wrong_type"}
    for q in quarantined.values():
        assert "KTO" in q["message"] and "train.method=kto" in q["message"], q["message"]
    assert "sft_row" not in {q["reason"] for q in quarantined.values()}
