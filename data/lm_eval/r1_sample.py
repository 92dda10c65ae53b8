"""The data of the local lm-eval task ``r1_sample_topic``: the held-out sample rows, question and final answer."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "test.jsonl"


def load(**_settings):
    """``{"test": Dataset(question, answer)}`` from data/sample/test.jsonl; the answer is what follows ``</think>``."""
    import datasets

    rows = []
    for line in SAMPLE.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        rows.append({"question": row["instruction"], "answer": row["output"].rsplit("</think>", 1)[-1].strip()})
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
