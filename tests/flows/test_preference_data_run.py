"""Public preference files, as a new user has them, through the data stages of a preference run (``--stop-after
tokenize`` with train.method dpo or kto): every row is accepted or quarantined with a reason, and the accepted
pairs come out tokenized. Sources: tests/fixtures/shapes/README.md; Firefly's
DPO layout (its repository has no license, so nothing was copied) is a row written here, key for key as Firefly's."""

import json
from pathlib import Path

import pytest
from conftest import write_lines

from flows.finetune import main

SHAPES = "tests/fixtures/shapes"
FIREFLY_LAYOUT = {
    "prompt": "How do I keep a sourdough starter alive?",
    "prompt_id": "0f3c",
    "chosen": [
        {"content": "How do I keep a sourdough starter alive?", "role": "user"},
        {
            "content": "Feed it equal weights of flour and water every day and keep it somewhere warm.",
            "role": "assistant",
        },
    ],
    "rejected": [
        {"content": "How do I keep a sourdough starter alive?", "role": "user"},
        {"content": "Seal it in the freezer and never open it.", "role": "assistant"},
    ],
    "messages": [
        {"content": "How do I keep a sourdough starter alive?", "role": "user"},
        {
            "content": "Feed it equal weights of flour and water every day and keep it somewhere warm.",
            "role": "assistant",
        },
    ],
    "score_chosen": 8.0,
    "score_rejected": 2.0,
}


def run_data_stages(capsys, *args: str) -> tuple[int, dict | None, str]:
    """``python -m flows.finetune --stop-after tokenize ARGS``: exit code, the run summary, stderr."""
    code = main(["--stop-after", "tokenize", *args])
    out = capsys.readouterr()
    summary = out.out.strip().splitlines()[-1].removeprefix("summary: ") if code == 0 else None
    return code, json.loads(Path(summary).read_text(encoding="utf-8")) if summary else None, out.err


def rows_in(path: str) -> int:
    text = Path(path).read_text(encoding="utf-8")
    return len(json.loads(text)) if path.endswith(".json") else len(text.splitlines())


def quarantined(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "validate" / "quarantine.jsonl").read_text("utf-8").splitlines()]


@pytest.mark.slow  # two data flows, whole
@pytest.mark.parametrize("method", ["dpo", "kto"])
def test_public_preference_files_run_through_the_data_stages_every_row_accounted_for(
    prefect_harness, tmp_path, capsys, method
):
    firefly = str(write_lines(tmp_path / "firefly_dummy_dpo_layout.jsonl", [FIREFLY_LAYOUT]))
    pair_files = [
        f"{SHAPES}/llamafactory_dpo_zh_demo.json",
        f"{SHAPES}/openai_cookbook_dpo_guide_sample.jsonl",
        firefly,
    ]
    kto_file = f"{SHAPES}/llamafactory_kto_en_demo.json"
    files = [*pair_files, kto_file]
    code, summary, err = run_data_stages(
        capsys,
        *("--set", f"runs_dir={json.dumps(str(tmp_path / 'runs'))}"),
        *("--set", f"train.method={method}"),
        *("--set", f"data.train_paths={json.dumps(files)}"),
        *("--set", 'data.test_path=""', "--set", "data.replay_path=null"),
        *("--set", "data.max_rejected_fraction=0.6"),  # a dpo run refuses the 5 labelled rows of 10
        *("--set", "tokenize.max_seq_length=8192"),
        *("--set", f"data.allowed_roots={json.dumps(['{project}/data', '.', str(tmp_path)])}"),
    )
    assert code == 0, err
    per_file = summary["data"]["per_file"]
    refused = quarantined(Path(summary["run_dir"]))
    for file in files:
        counts = per_file[file]
        assert counts["accepted"] + counts["quarantined"] == rows_in(file), file
    assert all(q["reason"] and q["message"] for q in refused)
    assert all(per_file[f]["quarantined"] == 0 for f in pair_files)  # every pair is accepted
    if method == "dpo":  # labelled answers are not pairs: refused, naming the method that takes them
        assert per_file[kto_file]["reasons"] == {"preference_label": 5}
        assert all("--set train.method=kto" in q["message"] for q in refused)
    else:
        assert per_file[kto_file]["accepted"] == 5
    tokenized = summary["tokenize"]["preference"]
    assert tokenized["rows_in"] == summary["debias"]["rows_in"] - summary["debias"]["blocked"]
    assert tokenized["rows"] > 0
    if method == "dpo":  # one row a pair, or a drop with its reason
        assert tokenized["rows"] + sum(tokenized["dropped"].values()) == tokenized["rows_in"]
