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


# bench/attack5 finding 6: code points that draw nothing, outside the zero-width set the first fix knew
INVISIBLE = ["\u034f", "\ufe0f", "\ufe00", "\U000e0100", "\U000e0041", "\U000e0020", "\u061c", "\u3164", "\u115f",
             "\u1160", "\uffa0", "\u180b", "\u180f", "\U0001d173", "\U0001d17a", "\u200b"]  # fmt: skip


@pytest.mark.parametrize("mark", INVISIBLE, ids=lambda c: f"U+{ord(c):04X}")
def test_answers_told_apart_only_by_a_character_that_draws_nothing_are_equal_and_contradict(tmp_path, mark):
    answer = "The capital of France is Paris."
    quarantined = validated(tmp_path, [
        {"prompt": "Capital?", "chosen": answer, "rejected": answer[:4] + mark + answer[4:]},
        {"prompt": "Capital?", "chosen": answer, "rejected": "It is Lyon."},
    ])  # fmt: skip
    assert {line: q["reason"] for line, q in quarantined.items()} == {1: "equal_sides"}
    rows = [pair("Is 7 prime?", "Yes, 7 is prime.", "No, 7 is not prime.", 1),
            pair("Is 7 prime?", f"No, 7 is{mark} not prime.", "Yes, 7 is prime.", 2)]  # fmt: skip
    _, _, dropped, report = dedup(rows, [], DedupConfig(near=False, preference_test_fraction=0))
    assert report.reasons == {"contradictory_pair": 2} and {d["line"] for d in dropped} == {1, 2}


def test_a_drawn_difference_is_kept_a_homoglyph_too():
    from r1lib.data.visible import visible_text

    # Out of scope by design: a Cyrillic "о" (U+043E) is drawn, so a pair using it is a different answer.
    assert visible_text("N\u043e, 7") != visible_text("No, 7")
    assert visible_text("\u0600\u0661") == "\u0600\u0661"  # an Arabic number sign (Cf, but drawn) stays
    assert visible_text("a\u034f\ufe0f\U000e0041\u3164 b") == "a b"


def test_pairs_after_different_earlier_answers_do_not_contradict():
    # bench/attack5 finding 8: the key held the user turns only, so "7" and "9" earlier read as one conversation
    def multi(number: str, chosen: str, rejected: str, line: int) -> dict:
        turns = [U("Pick a number below 10."), {"role": "assistant", "content": number}, U("Is your number prime?")]
        return preference_record(normalize_preference({"messages": turns, "chosen": chosen, "rejected": rejected}),
                                 "pairs.jsonl", line)  # fmt: skip

    rows = [multi("7", "Yes, it is prime.", "No, it is not prime.", 1),
            multi("9", "No, it is not prime.", "Yes, it is prime.", 2),
            multi("7", "No, it is not prime.", "Yes, it is prime.", 3)]  # fmt: skip
    _, _, dropped, report = dedup(rows, [], DedupConfig(near=False, preference_test_fraction=0))
    assert report.reasons == {"contradictory_pair": 2}  # 1 and 3 (both after "7"); 2 stands
    assert {d["line"]: d["duplicate_of"]["line"] for d in dropped} == {1: 3, 3: 1}


def test_a_null_prompt_and_a_pair_carrying_a_kto_label_are_named(tmp_path):
    # bench/attack5 finding 14: a null prompt read as role_order on 'chosen'; a KTO label beside a pair was ignored
    quarantined = validated(tmp_path, [
        {"prompt": None, "chosen": "a", "rejected": "b"},
        {"prompt": "Pair or label?", "chosen": "a", "rejected": "b", "label": True},
        {"prompt": "Pair or tag?", "chosen": "a", "rejected": "b", "kto_tag": "false"},
        {"prompt": "Category label?", "chosen": "a", "rejected": "b", "label": "geometry"},  # not a KTO label: a pair
    ])  # fmt: skip
    assert {line: (q["reason"], q["field"]) for line, q in quarantined.items()} == {
        1: ("empty_field", "prompt"),
        2: ("ambiguous_preference", "label"),
        3: ("ambiguous_preference", "kto_tag"),
    }
    assert "field 'prompt' is null" in quarantined[1]["message"]
    assert "train.method=dpo" in quarantined[2]["message"] and "train.method=kto" in quarantined[2]["message"]
