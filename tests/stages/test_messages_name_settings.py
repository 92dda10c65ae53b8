"""Messages that say what to change (issue 23): a refusal names the setting or mapping that fixes it, and does not
advise a setting that cannot help (truncate for a prompt that alone is too long, a rejected share of 1 when it is
already 1); drop counts say which rows were augmentations; tool-call turns and BELLE seed tasks are explained."""

import json

import pytest
from conftest import r1, write_lines

from r1lib.config import DataConfig, TokenizeConfig
from r1lib.data.records import RecordError, make_record
from r1lib.data.row_formats import normalize
from r1lib.errors import DataValidationError
from r1lib.io import write_jsonl
from tasks.tokenize import tokenize_file
from tasks.validate import validate, validate_file

LONG_PROMPT = make_record(normalize({"instruction": " ".join(map(str, range(300))), "output": "ok"}), "rows.jsonl", 1)


def test_a_prompt_too_long_for_truncation_says_so_and_does_not_advise_truncate(tokenizer, tmp_path):
    write_jsonl(tmp_path / "one.jsonl", [LONG_PROMPT])
    cfg = TokenizeConfig(max_seq_length=64, truncation="truncate")
    with pytest.raises(DataValidationError) as info:
        tokenize_file(tokenizer, tmp_path / "one.jsonl", cfg, tmp_path / "out")
    message = str(info.value)
    assert "tokenize.truncation=truncate" in message and "prompt alone" in message
    assert "or set tokenize.truncation=truncate" not in message and "tokenize.max_seq_length=" in message
    quarantined = [json.loads(line) for line in open(tmp_path / "out" / "quarantine.jsonl", encoding="utf-8")]
    assert "prompt alone is" in quarantined[0]["message"] and "cannot keep it" in quarantined[0]["message"]


def test_drop_counts_say_which_rows_were_augmentations(tokenizer, tmp_path):
    long = make_record(normalize({"instruction": "Count.", "output": r1(" ".join(map(str, range(300))), "300")}),
                       "rows.jsonl", 1)  # fmt: skip
    copy = {**long, "id": "c" * 16, "origin": "prompt_template:0", "parent": long["id"]}
    write_jsonl(tmp_path / "rows.jsonl", [long, copy, {**copy, "id": "d" * 16, "origin": "replay"}])
    with pytest.raises(DataValidationError) as info:
        tokenize_file(tokenizer, tmp_path / "rows.jsonl", TokenizeConfig(max_seq_length=64), tmp_path / "out")
    message = str(info.value)
    assert "3 of 3 rows" in message
    assert "counted after augmentation: 1 original rows and augmented copies {'prompt_template': 1, 'replay': 1}" in (
        message
    )


def test_drop_counts_say_how_many_rows_augmentation_added_when_only_originals_dropped(tokenizer, tmp_path):
    long = make_record(normalize({"instruction": "Count.", "output": r1(" ".join(map(str, range(300))), "300")}),
                       "rows.jsonl", 1)  # fmt: skip
    short = make_record(normalize({"instruction": "1 + 1?", "output": "2"}), "rows.jsonl", 2)
    write_jsonl(tmp_path / "rows.jsonl", [long, {**short, "id": "e" * 16, "origin": "replay", "parent": short["id"]}])
    with pytest.raises(DataValidationError) as info:
        tokenize_file(tokenizer, tmp_path / "rows.jsonl", TokenizeConfig(max_seq_length=64), tmp_path / "out")
    message = str(info.value)
    assert "1 of 2 rows (50%; the dropped rows are all original; augmentation added 1 of the 2 rows {'replay': 1})" in (
        message
    )


def test_a_split_refused_whole_is_not_told_to_raise_a_limit_already_at_one(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [{"Q": "a?", "A": "b"}, {"Q": "c?", "A": "d"}])
    cfg = DataConfig(
        train_paths=[str(path)], test_path="", replay_path=None, allowed_roots=[str(tmp_path)], max_rejected_fraction=1
    )
    with pytest.raises(DataValidationError) as info:
        validate(cfg, tmp_path / "out")
    message = str(info.value)
    assert "max_rejected_fraction=1" in message and "raise the limit" not in message
    assert "data.columns" in message  # the unknown_format message's mapping is quoted


def test_sharegpt_tool_call_turns_are_explained(tmp_path):
    row = {"conversations": [{"from": "human", "value": "Weather?"}, {"from": "function_call", "value": "{}"},
                             {"from": "observation", "value": "{}"}, {"from": "gpt", "value": "Sunny."}]}  # fmt: skip
    _, quarantined, _ = validate_file(write_lines(tmp_path / "rows.jsonl", [row]), max_chars=100_000)
    message = quarantined[0]["message"]
    assert quarantined[0]["reason"] == "unknown_role" and "tool call" in message and "data.tools" in message


def test_belle_seed_tasks_point_at_their_instances(tmp_path):
    row = {"id": "seed_task_0", "name": "breakfast_suggestion", "instruction": "Suggest a breakfast.",
           "instances": [{"input": "", "output": "Oatmeal with fruit."}], "is_classification": False}  # fmt: skip
    with pytest.raises(RecordError) as info:
        normalize(row)
    assert info.value.reason == "missing_field" and "instances" in str(info.value) and "data.columns" in str(info.value)
