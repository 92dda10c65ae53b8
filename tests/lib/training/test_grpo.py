"""The grpo method: its rows come from the tokenize stage's rows (prompt cut at the generation prompt, answer after
</think>), rows without a checkable answer are refused with a reason, its settings reach TRL's GRPOConfig, and a
batch that splits a group is refused by setting. Training: tests/lib/training/test_grpo_signal.py (slow)."""

from __future__ import annotations

import json

import pytest

from r1lib.config import TokenizeConfig
from r1lib.data.records import make_record
from tests.lib.training.test_methods import spec

ROWS = [
    {"instruction": "What is 6 x 7?", "output": "<think>\nSix sevens are 42.\n</think>\n\n42"},
    {"instruction": "Write an essay.", "output": "<think>\nAn essay.\n</think>\n\n" + "word " * 60},
    {"instruction": "No reasoning here?", "output": "Just an answer."},  # its completion still closes the block
]


def tokenized(tokenizer, mode: str = "keep", **cfg):
    from r1lib.data.row_formats import normalize
    from tasks.tokenize import tokenize_records

    records = [make_record(normalize(r), "rows.jsonl", i) for i, r in enumerate(ROWS, 1)]
    rows, _, _ = tokenize_records(tokenizer, records, TokenizeConfig(think_in_loss=mode, **cfg))
    return rows


@pytest.mark.parametrize("mode", ["keep", "mask", "drop"])
def test_rows_give_the_generation_prompt_and_the_reference_answer(tokenizer, mode):
    from r1lib.training.methods.grpo import grpo_rows

    kept, refused = grpo_rows(tokenized(tokenizer, mode), tokenizer, max_answer_chars=100)
    # the prompt ends where generation starts, whatever the reasoning's place in the row; the tokenizer adds the BOS
    assert kept == [
        {"prompt": "<｜User｜>What is 6 x 7?<｜Assistant｜><think>\n", "answer": "42"},
        {"prompt": "<｜User｜>No reasoning here?<｜Assistant｜><think>\n", "answer": "Just an answer."},
    ]
    assert [(r["row"], r["reason"].split(":")[0]) for r in refused] == [(1, "free_text_answer")]
    assert tokenizer(kept[0]["prompt"])["input_ids"].count(tokenizer.bos_token_id) == 1  # no duplicate BOS


def test_rows_with_no_answer_after_the_think_block_are_refused(tokenizer):
    from r1lib.training.methods.grpo import grpo_rows

    prompt = tokenizer("<｜User｜>Q?<｜Assistant｜><think>\n")["input_ids"]
    rows = []
    for completion in ("thinking only", "thinking\n</think>\n\n  "):
        ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        rows.append({"input_ids": prompt + ids, "labels": [-100] * len(prompt) + ids})
    _, refused = grpo_rows(rows, tokenizer, max_answer_chars=100)
    assert [r["reason"].split(":")[0] for r in refused] == ["no_answer", "empty_answer"]


def test_a_row_cut_by_truncation_is_refused(tokenizer):
    from r1lib.training.methods.grpo import grpo_rows

    rows = tokenized(tokenizer, max_seq_length=24, truncation="truncate", max_dropped_fraction=1.0)
    _, refused = grpo_rows(rows, tokenizer, max_answer_chars=1000)
    assert any(r["reason"].startswith("truncated_row") for r in refused)


def test_every_row_is_accounted_for_and_no_checkable_row_fails_by_name(tokenizer, tmp_path):
    from datasets import Dataset

    from r1lib.errors import PermanentError
    from r1lib.training.methods.grpo import prepared_rows

    rows = Dataset.from_list(tokenized(tokenizer))
    kept = prepared_rows(rows, tokenizer, 100, "the training set", tmp_path)
    counts = json.loads((tmp_path / "grpo_rows.json").read_text())
    assert len(kept) == counts["rows_kept"] == 2 and counts["rows_in"] == 3
    assert counts["refused"] == {"free_text_answer": 1}
    assert len((tmp_path / "grpo_refused.jsonl").read_text().splitlines()) == 1
    with pytest.raises(PermanentError, match="train.grpo.max_answer_chars"):
        prepared_rows(rows.select([1]), tokenizer, 100, "the training set", None)


def test_grpo_settings_reach_trl_and_a_split_group_is_refused_by_setting():
    from datasets import Dataset
    from trl import GRPOConfig

    from r1lib.config import TrainConfig
    from r1lib.errors import ConfigError
    from r1lib.training.methods.base import trainer_arguments
    from r1lib.training.methods.grpo import check_group_size

    grpo = {"num_generations": 4, "max_completion_length": 64, "overlong_buffer": 16, "beta": 0.0, "loss_type": "grpo"}
    cfg = TrainConfig(method="grpo", max_steps=2, grpo=grpo)
    s = spec(Dataset.from_list([{"input_ids": [1], "labels": [1]}]), cfg=cfg)
    check_group_size(s)  # 2 x 4 = 8 completions: two groups of 4
    args = trainer_arguments(s, GRPOConfig, num_generations=4, max_completion_length=64, beta=0.0, loss_type="grpo")
    assert (args.num_generations, args.max_completion_length, args.beta, args.loss_type) == (4, 64, 0.0, "grpo")
    with pytest.raises(ConfigError, match=r"6 completions per optimizer step .* train.grpo.num_generations = 4"):
        check_group_size(spec(s.train_rows, cfg=cfg, micro_batch=3, accumulation=2))  # as a launch plan can split it


def test_a_grpo_batch_that_splits_a_group_is_refused_by_the_form():
    """The form refuses it before any stage runs, naming both settings; other methods do not care."""
    from pydantic import ValidationError

    from r1lib.config import PipelineConfig, TrainConfig

    with pytest.raises(ValidationError, match=r"2 completions per optimizer step .*train\.grpo.num_generations = 8"):
        TrainConfig(method="grpo", micro_batch_size=1, gradient_accumulation=2)
    with pytest.raises(ValidationError, match="grpo.num_generations = 8"):
        PipelineConfig.model_validate({"train": {"method": "grpo", "micro_batch_size": 3, "gradient_accumulation": 1}})
    assert TrainConfig(method="grpo", micro_batch_size=4, gradient_accumulation=4).grpo.num_generations == 8
    assert TrainConfig(method="sft", micro_batch_size=1, gradient_accumulation=1).micro_batch_size == 1


def test_grpo_settings_refuse_a_buffer_past_the_limit_and_all_weights_zero():
    from pydantic import ValidationError

    from r1lib.config import TrainConfig

    with pytest.raises(ValidationError, match="overlong_buffer"):
        TrainConfig(grpo={"max_completion_length": 32, "overlong_buffer": 64})
    with pytest.raises(ValidationError, match="every weight is 0"):
        TrainConfig(grpo={"rewards": {"format": 0, "correctness": 0, "overlong": 0}})


def test_the_story_table_and_plot_show_the_rewards_per_logging_step(tmp_path):
    from r1lib.training.methods.grpo import STORY
    from r1lib.training.report import loss_curve, method_story

    history = [
        {"step": 5, "loss": 0.01, "reward": 0.4, "rewards/correctness/mean": 0.25, "completions/mean_length": 30.0,
         "completions/think_closed_ratio": 0.5, "completions/clipped_ratio": 0.125},
        {"step": 10, "loss": 0.02, "reward": 0.8, "rewards/correctness/mean": 0.625, "completions/mean_length": 24.0,
         "completions/think_closed_ratio": 0.875, "completions/clipped_ratio": 0.0},
        {"train_runtime": 12.0},
    ]  # fmt: skip
    story = method_story(history, STORY)
    assert [r["step"] for r in story] == [5, 10] and story[1]["rewards/correctness/mean"] == 0.625
    assert method_story(history, ("loss",)) == []  # SFT: nothing beyond the loss
    png = loss_curve(history, tmp_path / "curve.png", STORY)
    assert png.stat().st_size > 0


@pytest.mark.slow
def test_grpo_trains_with_recorded_rollouts(tmp_path, monkeypatch):
    """Two GRPO steps on a tiny random model (16-bit, CPU) with train.grpo.rollouts = recorded: every rollout goes
    through the graph decoder (eager here) and the steps complete with completions of the configured length."""
    import bench.grpo_throughput as bench
    import r1lib.model.graph_decode as graph_decode

    calls = []
    original = graph_decode.GraphDecoder.generate
    monkeypatch.setattr(
        graph_decode.GraphDecoder, "generate", lambda self, *a, **k: calls.append(1) or original(self, *a, **k)
    )
    args = bench.parse_args(
        "--shape tiny-qwen --steps 2 --num-generations 4 --max-completion-length 16 --prompt-tokens 20,40 --rows 8 "
        "--rollouts recorded".split()
    )
    spec = {**bench.settings(args), **bench.prepare(args, tmp_path)}
    spec["train"]["max_steps"] = 2
    spec["model"]["load_in_4bit"] = False  # bitsandbytes' CPU repacking: recorded rollouts need 16-bit on a CPU
    figures = bench.run_pipeline(spec, tmp_path)
    assert figures["steps"] == 2 and len(calls) == 2
    assert figures["generated_tokens"] == 2 * 8 * 16  # random weights never stop: every completion to the limit
