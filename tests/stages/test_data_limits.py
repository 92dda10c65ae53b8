"""Every stage that removes rows counts them and fails past its configured share, naming the setting and the fix."""

import logging

import pytest
from conftest import r1

from r1lib.config import DedupConfig, TokenizeConfig
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from r1lib.data.shards import Shard
from r1lib.errors import DataValidationError
from r1lib.io import write_jsonl
from tasks.dedup import dedup_files
from tasks.tokenize import tokenize_file


def rec(prompt: str, answer: str, line: int) -> dict:
    return make_record(normalize({"instruction": prompt, "output": answer}), "rows.jsonl", line)


LONG = rec("Count from 1 to 300.", r1(" ".join(map(str, range(1, 301))), "300"), 1)


def test_a_single_over_long_row_fails_naming_max_seq_length(tokenizer, tmp_path):
    write_jsonl(tmp_path / "one.jsonl", [LONG])
    with pytest.raises(DataValidationError) as info:
        tokenize_file(tokenizer, tmp_path / "one.jsonl", TokenizeConfig(max_seq_length=64), tmp_path / "out")
    message = str(info.value)
    assert "1 of 1 rows" in message and "tokenize.max_seq_length=64" in message and "leaves no row" in message
    assert "tokenize.truncation=truncate" in message and "quarantine.jsonl" in message


def test_dropped_rows_under_the_limit_are_warned_about_and_counted(tokenizer, tmp_path, caplog):
    rows = [LONG] + [rec(f"{n} + 1?", r1(f"{n} plus 1.", str(n + 1)), n + 2) for n in range(19)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    with caplog.at_level(logging.WARNING):
        result = tokenize_file(tokenizer, tmp_path / "rows.jsonl", TokenizeConfig(max_seq_length=128), tmp_path / "o")
    assert (result.rows_in, result.rows_out, result.dropped_too_long) == (20, 19, 1)
    assert "1 of 20 rows (5%) are longer than tokenize.max_seq_length=128" in caplog.text
    assert result.summary()["tokenize"]["dropped_too_long"] == 1
    with pytest.raises(DataValidationError, match=r"over tokenize\.max_dropped_fraction=0\.01"):
        tokenize_file(
            tokenizer, tmp_path / "rows.jsonl", TokenizeConfig(max_seq_length=128, max_dropped_fraction=0.01), tmp_path
        )


def test_dedup_past_its_share_fails_naming_the_setting(tmp_path):
    rows = [rec("What is 2 + 2?", "4", n) for n in range(1, 5)] + [rec("What is 3 + 3?", "6", 5)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    train = [Shard.of(tmp_path / "train.jsonl")]
    with pytest.raises(
        DataValidationError, match=r"dedup removed 3 of 5 train rows \(60%, over dedup\.max_removed_fraction=0\.5\)"
    ):
        dedup_files(train, [], DedupConfig(), tmp_path / "a")
    result = dedup_files(train, [], DedupConfig(max_removed_fraction=0.6), tmp_path / "b")
    assert result.report.reasons == {"duplicate": 3} and result.summary()["dedup"]["reasons"] == {"duplicate": 3}
