"""The layouts issue 23 names, from their public sources (tests/fixtures/layouts/README.md,
tests/fixtures/public/README.md), train through the tiny flow with a mapping or without one: each goes through the
data stages here (validate, dedup, augment, debias, tokenize, in this process), every answer it holds reaches the
trained tokens, and one whole-flow run takes all of them, in one file (two slow tests read it: the layouts, and what a
run shorter than one logging interval reports). Preference layouts are refused by name; a Chinese role-play file gets
no English template text."""

import csv
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from r1lib.config import AugmentConfig, DataConfig, DebiasConfig, DedupConfig, TokenizeConfig
from r1lib.data.language import language_of
from r1lib.io import write_jsonl
from tasks.augment import all_templates, augment
from tasks.debias import debias_file
from tasks.dedup import dedup_files
from tasks.tokenize import tokenize_file
from tasks.validate import validate
from tests.conftest import ROOT

LAYOUTS, PUBLIC = ROOT / "tests" / "fixtures" / "layouts", ROOT / "tests" / "fixtures" / "public"
MEDICAL = LAYOUTS / "medical_o1_sft_zh_excerpt.json"
MATH = LAYOUTS / "math500_excerpt.jsonl"
HUANHUAN = LAYOUTS / "selfllm_huanhuan_excerpt.json"
DPO = LAYOUTS / "foundry_orca_dpo_pairs_validation_excerpt.jsonl"
TRACES = LAYOUTS / "r1_distill_pcmb_traces_excerpt.jsonl"  # R1 traces: question / reasoning / answer_text
# Its rows also hold answer_letter, predicted_letter, teacher_model: text beside the layout, so it takes a mapping.
TRACES_COLUMNS = {"prompt": "question", "reasoning": "reasoning", "answer": "answer_text"}
TOKENIZE = TokenizeConfig(max_seq_length=2048)  # the embedded model's context: the medical-o1 chain of thought is long


def rows_of(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def qa_csv(tmp_path: Path) -> Path:
    """A QA CSV with problem/answer columns: MATH-500's problem and final answer, in a CSV as a user saves one."""
    path = tmp_path / "math_qa.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerows([["problem", "answer"], *[[r["problem"], r["answer"]] for r in rows_of(MATH)]])
    return path


def math_parquet(tmp_path: Path) -> Path:
    pd.DataFrame(rows_of(MATH)).to_parquet(tmp_path / "math.parquet")
    return tmp_path / "math.parquet"


# name: (the file, or how to make it from a public one; data.columns for it or None; rows refused by the validate stage)
CASES = {
    "medical-o1 Question/Complex_CoT/Response": (lambda tmp: MEDICAL, None, 0),
    "medical-o1 through a column mapping": (
        lambda tmp: MEDICAL, {"prompt": "Question", "reasoning": "Complex_CoT", "answer": "Response"}, 0,
    ),
    "MATH problem/solution/answer": (lambda tmp: MATH, None, 0),
    "MATH as Parquet": (math_parquet, None, 0),
    "QA CSV problem/answer": (qa_csv, None, 0),
    "BELLE question/std_answer": (lambda tmp: LAYOUTS / "belle_eval_set_excerpt.jsonl", None, 1),  # an empty answer
    "GSM8K question/answer": (lambda tmp: LAYOUTS / "gsm8k_train_excerpt.jsonl", None, 0),
    "GSM8K OpenAI chat (the issue's collapse file)": (
        lambda tmp: LAYOUTS / "foundry_gsm8k_chat_validation_excerpt.jsonl", None, 0,
    ),
    "Chinese role-play (Alpaca)": (lambda tmp: HUANHUAN, None, 0),
    "Chinese instructions (Alpaca)": (lambda tmp: PUBLIC / "llamafactory_alpaca_zh_demo.json", None, 0),
    "OpenAI fine-tuning sample": (lambda tmp: PUBLIC / "openai_cookbook_toy_chat_fine_tuning.jsonl", None, 1),
    "R1 traces question/reasoning/answer_text through a column mapping": (lambda tmp: TRACES, TRACES_COLUMNS, 0),
}  # fmt: skip


def data_stages(tmp_path: Path, path: Path, columns: dict | None, tokenizer) -> tuple:
    """validate -> dedup -> augment -> debias -> tokenize in this process, with the stages' default settings and
    the tiny preset's augmentation (the shipped replay rows mixed in as a share of the training rows)."""
    data = DataConfig(
        train_paths=[str(path)], test_path="", replay_path="data/sample/general.jsonl", max_rejected_fraction=0.5,
        allowed_roots=["{project}/data", str(path.parent)], columns={str(path): columns} if columns else {},
    )  # fmt: skip
    validated = validate(data, tmp_path / "validate")
    deduped = dedup_files(validated.shards["train"], [], DedupConfig(), tmp_path / "dedup")
    records = [json.loads(line) for line in open(deduped.train, encoding="utf-8")]
    replay = [json.loads(line) for line in open(validated.replay, encoding="utf-8")]
    cfg = AugmentConfig(replay_ratio=1.0)
    augmented = augment(records, replay, cfg, all_templates(cfg))
    write_jsonl(tmp_path / "augmented.jsonl", augmented)
    debiased = debias_file(tmp_path / "augmented.jsonl", DebiasConfig(), tmp_path / "debias")
    tokenized = tokenize_file(tokenizer, Path(debiased.shards[0].path), TOKENIZE, tmp_path / "tokenize")
    return validated, records, augmented, tokenized


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_layout_goes_through_the_data_stages_to_trained_tokens(case, tmp_path, tokenizer):
    make, columns, refused = CASES[case]
    path = make(tmp_path)
    validated, records, augmented, tokenized = data_stages(tmp_path, path, columns, tokenizer)
    assert validated.quarantined == refused and records
    assert (tokenized.rows_in, tokenized.rows_out, tokenized.dropped_too_long) == (len(augmented),) * 2 + (0,)
    from datasets import load_from_disk

    trained = [tokenizer.decode([t for t in row if t != -100]) for row in load_from_disk(tokenized.dataset)["labels"]]
    for record in records:  # every answer of the user's rows is a training target
        answer = record["messages"][-1]["content"].strip()
        assert any(answer in text for text in trained), (case, answer[:80])


def test_r1_traces_without_a_mapping_are_refused_with_the_mapping_that_trains_them(tmp_path, tokenizer):
    data = DataConfig(train_paths=[str(TRACES)], test_path="", replay_path=None, allowed_roots=[str(LAYOUTS)])
    with pytest.raises(Exception) as info:
        validate(data, tmp_path / "validate")
    message = str(info.value)
    assert "3 of 3 rows rejected" in message and "unknown_format" in message
    pasted = json.loads(re.search(r"--set 'data\.columns=(\{.*?\}\})'", message).group(1))
    assert pasted == {str(TRACES): TRACES_COLUMNS}  # answer_text, not the answer_letter beside it
    _, records, _, tokenized = data_stages(tmp_path / "mapped", TRACES, pasted[str(TRACES)], tokenizer)
    from datasets import load_from_disk

    trained = [tokenizer.decode([t for t in row if t != -100]) for row in load_from_disk(tokenized.dataset)["labels"]]
    source = rows_of(TRACES)
    assert [(r["messages"][0]["content"], r["reasoning"]) for r in records] == [
        (s["question"], s["reasoning"].strip()) for s in source
    ]
    for row in source:  # the chain of thought is trained inside the think block, the answer after it
        assert any(row["reasoning"].strip() in text and row["answer_text"].strip() in text for text in trained)


def test_the_chinese_role_play_file_gets_no_english_template_text_with_default_settings(tmp_path, tokenizer):
    validated, records, augmented, _ = data_stages(tmp_path, HUANHUAN, None, tokenizer)
    cfg = AugmentConfig()
    english = [p.strip() for t in all_templates(cfg) if language_of(t) == "en" for p in t.split("{instruction}")]
    prompts = [m["content"] for r in augmented if r["origin"] != "replay" for m in r["messages"] if m["role"] == "user"]
    # No template variant: the rows carry no reasoning (dedup drops one of the 12 as a near duplicate).
    assert validated.reports[0].accepted == 12 and len(prompts) == len(records) >= 11
    assert not [p for p in prompts for e in english if e and e in p]
    assert {r["messages"][0]["content"] for r in records} >= {"皇上驾到！", "甄夫人与二小姐觐见莞嫔娘娘。"}


def test_openai_dpo_rows_are_refused_as_preference_data_naming_the_training_method(tmp_path):
    data = DataConfig(train_paths=[str(DPO)], test_path="", replay_path=None, allowed_roots=[str(LAYOUTS)])
    with pytest.raises(Exception) as info:
        validate(data, tmp_path / "validate")
    message = str(info.value)
    assert "2 of 2 rows rejected" in message and "preference_data" in message and "train.method" in message


def combined_rows(tmp_path: Path) -> list[dict]:
    """Every layout above that needs no mapping, row by row in one JSON lines file (CSV and Parquet rows as the
    objects they read as), plus the OpenAI DPO rows (refused by name, counted). A mapped layout is its own input."""
    rows = []
    for make, columns, _ in CASES.values():
        path = make(tmp_path)
        if columns or path.suffix in (".csv", ".parquet"):
            continue  # the same rows as the JSON of their source
        rows += rows_of(path)
    return rows + rows_of(DPO)


LONG_LOGGING_INTERVAL = 100  # longer than the whole-flow run below


@pytest.fixture(scope="module")
def layouts_run(prefect_harness, tmp_path_factory):
    """Every layout in one file through the whole tiny flow: two steps, one checkpoint at the last, and the loss
    logging interval longer than the run (what a run shorter than one logging interval reports is checked here too)."""
    from flows.finetune import finetune
    from r1lib.presets import expand_preset
    from tests.server_stack import small_config

    tmp_path = tmp_path_factory.mktemp("layouts-flow")
    write_jsonl(tmp_path / "layouts.jsonl", combined_rows(tmp_path))
    traces = tmp_path / TRACES.name  # a second input: its layout takes a mapping, which is per file
    traces.write_bytes(TRACES.read_bytes())
    config = small_config(tmp_path, "layouts", train={"save_steps": 2, "logging_steps": LONG_LOGGING_INTERVAL})
    config["data"] |= {
        "train_paths": [str(tmp_path / "layouts.jsonl"), str(traces)], "test_path": "",
        "columns": {str(traces): TRACES_COLUMNS},
    }  # fmt: skip
    config["tokenize"] = {"max_seq_length": 2048}
    return finetune(expand_preset(config)), tmp_path / "layouts.jsonl", traces


@pytest.mark.slow  # the whole tiny flow (train, evaluate, export, smoke) on one combined file
def test_all_layouts_in_one_file_train_through_the_whole_tiny_flow(layouts_run):
    result, path, traces = layouts_run
    data = result.summary.data
    reasons = data["data"]["per_file"][str(path)]["reasons"]
    assert reasons == {"preference_data": 2, "empty_field": 1, "role_order": 1}
    assert data["data"]["per_file"][str(traces)] == {"accepted": 3, "quarantined": 0, "reasons": {}}
    assert data["dedup"]["held_out"]["kind"] == "split" and data["dedup"]["test_out"] > 0
    assert data["train"]["steps"] == 2 and len(result.ggufs) == 2 and result.smoke is not None
    assert "held-out" in result.summary.text


@pytest.mark.slow  # the same run
def test_a_run_shorter_than_one_logging_interval_still_reports_its_loss(layouts_run):
    """train.max_steps < train.logging_steps: the loss is logged at every checkpoint and at the last step
    (r1lib/training/fit.py), so the summary never lacks one. (It used to read the tiny flow run, which now logs every
    10 steps for the tracker's loss curve: tests/flows/test_tracking_flow.py.)"""
    result, _, _ = layouts_run
    trained = result.trained
    assert 0 < trained.steps < LONG_LOGGING_INTERVAL and trained.first_loss is not None
    assert trained.first_loss == trained.last_loss  # the one loss, logged at the last step
    assert f"loss {trained.first_loss:.3f} -> {trained.last_loss:.3f}" in result.summary.text
    on_disk = json.loads((Path(result.run_dir) / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["train"]["first_loss"] == trained.first_loss
    assert on_disk["fairness"]["prompts"] == result.summary.data["fairness"]["prompts"] > 0
