"""Shared fixtures. Prefect runs against a throwaway local API (one per session: it takes ~15 s to start)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.chdir(ROOT)  # the configuration's default paths (data/..., .cache) are relative to the project root


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tokenizer():
    from r1lib.model.embedded import build_tokenizer

    return build_tokenizer()


# 120 tokenized sample rows (the tiny model's tokenizer), for the training fault and multi-process tests.
@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, tokenizer):
    from datasets import Dataset

    from r1lib.config import TokenizeConfig
    from r1lib.data.records import make_record
    from r1lib.data.row_formats import normalize
    from r1lib.io import read_jsonl
    from tasks.tokenize import tokenize_records

    rows = read_jsonl(ROOT / "data/sample/train.jsonl")[:120]
    records = [make_record(normalize(r), "train.jsonl", i) for i, r in enumerate(rows, 1)]
    tokenized, _, _ = tokenize_records(tokenizer, records, TokenizeConfig())
    path = tmp_path_factory.mktemp("data") / "dataset"
    Dataset.from_list(tokenized).save_to_disk(str(path))
    return str(path)


def write_lines(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def r1(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"
