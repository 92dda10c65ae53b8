"""A stage that fails past its share limit names the quarantine file that holds the removed rows: the file must
exist and hold them. Before, dedup and tokenize raised before joining their shards' quarantine parts, so the file
the message named did not exist (seen in a --stop-after tokenize run: 60 of 100 train rows duplicates)."""

import json
import re

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


def named_quarantine(message: str) -> list[dict]:
    path = re.search(r"(/\S+quarantine\.jsonl)", message).group(1)
    with open(path, encoding="utf-8") as handle:  # FileNotFoundError before the fix
        return [json.loads(line) for line in handle]


def test_dedup_past_its_limit_names_a_quarantine_that_holds_the_removed_rows(tmp_path):
    rows = [rec("What is 2 + 2?", "4", n) for n in range(1, 5)] + [rec("What is 3 + 3?", "6", 5)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataValidationError, match="over dedup.max_removed_fraction") as refused:
        dedup_files([Shard.of(tmp_path / "train.jsonl")], [], DedupConfig(), tmp_path / "out")
    removed = named_quarantine(str(refused.value))
    assert [(r["reason"], r["line"]) for r in removed] == [("duplicate", 2), ("duplicate", 3), ("duplicate", 4)]


def test_tokenize_past_its_limit_names_a_quarantine_that_holds_the_dropped_rows(tokenizer, tmp_path):
    long = rec("Count from 1 to 300.", r1(" ".join(map(str, range(1, 301))), "300"), 1)
    rows = [long] + [rec(f"{n} + 1?", r1(f"{n} plus 1.", str(n + 1)), n + 2) for n in range(9)]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataValidationError, match="max_dropped_fraction") as refused:
        tokenize_file(
            tokenizer, tmp_path / "rows.jsonl", TokenizeConfig(max_seq_length=128, max_dropped_fraction=0.05), tmp_path
        )
    dropped = named_quarantine(str(refused.value))
    assert [(r["reason"], r["source"]["line"] if "source" in r else r.get("line")) for r in dropped] == [
        ("too_long", 1)
    ]
