"""lm-eval that understands thinking (r1lib/model/benchmarks.py) on the shipped local task ``r1_sample_topic``
(data/lm_eval/): a response whose reasoning tries a wrong answer but whose final answer is right scores as right, and
the think block is what makes the difference (scored whole, the same responses score zero).

The tiny model's ``generate`` is replaced by one that answers each prompt with a written R1 response, so the scores
come from lm-eval's own pipeline (chat template, HFLM's ``think_end_token``, the task's filters and exact_match), not
from the tiny model's skill."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("lm_eval", reason="the tracking extra: scripts/bootstrap dev,server,tracking")

ROWS = 4


def sample_answers() -> dict[str, str]:
    from r1lib.io import read_jsonl

    return {
        r["instruction"]: r["output"].rsplit("</think>", 1)[-1].strip() for r in read_jsonl("data/sample/test.jsonl")
    }


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import AutoModelForCausalLM

    from r1lib.model.loading import load_tokenizer
    from r1lib.presets import preset
    from tasks.resolve_model import resolve_model

    config = preset("tiny")
    model_dir = resolve_model(config.model, config.cache_dir)
    return AutoModelForCausalLM.from_pretrained(model_dir), load_tokenizer(model_dir, trust_remote_code=False)


def answering(model, tokenizer, monkeypatch, response_for):
    """Make ``model.generate`` answer each prompt in the batch with ``response_for(question, right_answer)``."""
    import torch

    answers = sample_answers()

    def generate(input_ids, **_):
        rows = []
        for ids in input_ids.tolist():
            prompt = tokenizer.decode(ids)
            question = next(q for q in answers if q in prompt)
            text = response_for(question, answers[question]) + tokenizer.eos_token
            rows.append(ids + tokenizer.encode(text, add_special_tokens=False))
        width = max(len(r) for r in rows)
        return torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])

    monkeypatch.setattr(model, "generate", generate)


def score(model, tokenizer, **changes) -> float:
    from r1lib.config import EvalConfig
    from r1lib.model.benchmarks import run_lm_eval

    cfg = EvalConfig(
        lm_eval_tasks=["r1_sample_topic"], lm_eval_path="data/lm_eval", lm_eval_limit=ROWS, batch_size=2,
        lm_eval_thinking_tokens=64, lm_eval_answer_tokens=32, **changes,
    )  # fmt: skip
    scores = run_lm_eval(model, tokenizer, cfg)
    assert set(scores) == {"r1_sample_topic/exact_match,none"}, scores
    return scores["r1_sample_topic/exact_match,none"]


@pytest.mark.slow  # lm-eval's whole pipeline on the tiny model: a minute on a busy machine
def test_a_wrong_guess_inside_the_reasoning_does_not_spoil_a_right_final_answer(tiny_model, monkeypatch):
    model, tokenizer = tiny_model

    def second_thoughts(question, right):
        return f"Maybe the answer is: The sentence is about food.\nNo, look again.\n</think>\n\n{right}"

    answering(model, tokenizer, monkeypatch, second_thoughts)
    assert score(model, tokenizer) == 1.0
    assert score(model, tokenizer, lm_eval_strip_thinking=False) == 0.0  # scored whole, the reasoning spoils it


@pytest.mark.slow  # lm-eval's whole pipeline on the tiny model: a minute on a busy machine
def test_a_right_guess_inside_the_reasoning_does_not_rescue_a_wrong_final_answer(tiny_model, monkeypatch):
    model, tokenizer = tiny_model
    answering(model, tokenizer, monkeypatch, lambda q, right: f"{right}\n</think>\n\nThe sentence is about food.")
    assert score(model, tokenizer) == 0.0


@pytest.mark.slow  # lm-eval's whole pipeline on the tiny model: a minute on a busy machine
def test_an_answer_still_inside_its_think_block_at_the_budget_scores_wrong(tiny_model, monkeypatch):
    model, tokenizer = tiny_model
    answering(model, tokenizer, monkeypatch, lambda q, right: f"Thinking about it... {right}")
    assert score(model, tokenizer) == 0.0


def test_the_local_task_is_the_sample_data_with_its_final_answers():
    from r1lib.io import read_jsonl

    import_path = "data/lm_eval"
    import sys

    sys.path.insert(0, import_path)
    try:
        import r1_sample
    finally:
        sys.path.remove(import_path)
    rows = r1_sample.load()["test"]
    raw = read_jsonl("data/sample/test.jsonl")
    assert len(rows) == len(raw) and rows[0]["question"] == raw[0]["instruction"]
    assert rows[0]["answer"].startswith("The sentence is about") and "<think>" not in json.dumps(rows[:])
