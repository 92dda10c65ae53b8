"""Training methods are pluggable: every name ``train.method`` accepts is registered, the SFT method builds its
trainer from a typed ``TrainerSpec``, rows a method cannot train on are refused by name, and the OOM retry lives in
the library (turn recompute on, then halve the micro-batch)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest


def spec(rows, **changes):
    from r1lib.config import ModelConfig, TrainConfig
    from r1lib.training.methods import TrainerSpec

    return TrainerSpec(
        **{
            "backend": "hf",
            "train_rows": rows,
            "model_dir": "unused",
            "model_cfg": ModelConfig(),
            "cfg": TrainConfig(max_steps=3, save_steps=2, eval_steps=2, early_stopping_patience=1),
            "max_seq_length": 128,
            "output_dir": Path("checkpoints"),
            "micro_batch": 2,
            "accumulation": 4,
            **changes,
        }
    )


def test_every_configurable_method_is_registered_and_the_default_is_sft():
    from r1lib.config import Method, TrainConfig
    from r1lib.training.methods import METHODS

    assert set(typing.get_args(Method)) == set(METHODS)
    assert all(method.name == name and method.columns for name, method in METHODS.items())
    assert TrainConfig().method == "sft" and TrainConfig.model_fields["method"].description
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="ppo")


def test_the_sft_method_builds_its_arguments_from_the_spec_with_the_launch_preset_on_top():
    from datasets import Dataset

    from r1lib.training.methods.sft import sft_config

    rows = Dataset.from_dict({"input_ids": [[1, 2]], "labels": [[-100, 2]]})
    args = sft_config(spec(rows, eval_rows=rows, trainer_args={"ddp_timeout": 77}))
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps, args.max_length) == (2, 4, 128)
    assert args.prediction_loss_only and args.eval_strategy == "steps" and args.load_best_model_at_end
    assert args.ddp_timeout == 77 and args.output_dir == "checkpoints"


def test_rows_without_the_columns_a_method_trains_on_are_refused_by_name():
    from datasets import Dataset

    from r1lib.errors import PermanentError
    from r1lib.training.methods import METHODS

    with pytest.raises(PermanentError, match=r"train.method = sft .*no \['labels'\]"):
        METHODS["sft"].check_rows(Dataset.from_dict({"input_ids": [[1, 2]]}), "the training set")


def oom_above(monkeypatch, fits: int) -> list[tuple[int, int]]:
    """Training launches stubbed: a micro-batch above ``fits`` runs out of CUDA memory, one at or below it trains.
    Returns the (micro-batch, accumulation) of every attempt, as they come."""
    import r1lib.training.retry as retry
    from r1lib.training.fit import FitOutcome
    from r1lib.training.launcher import CudaOutOfMemory

    attempts = []

    def fake_launch(attempt, plan, work, hook):
        attempts.append((attempt.micro_batch, attempt.accumulation))
        if attempt.micro_batch > fits:
            raise CudaOutOfMemory("CUDA out of memory (planted)")
        return FitOutcome(
            steps=1, epochs=0.1, train_loss=1.0, losses=[1.0], seconds=1.0, tokens=10,
            steady_tokens_per_second=None, log_history=[],
        )  # fmt: skip

    monkeypatch.setattr(retry, "launch", fake_launch)
    return attempts


def test_the_oom_retry_halves_the_micro_batch_at_the_same_effective_batch(tmp_path, monkeypatch):
    import r1lib.training.retry as retry
    from r1lib.config import ModelConfig, TrainConfig
    from r1lib.training.fit import FitSpec
    from r1lib.training.launcher import CudaOutOfMemory, LaunchPlan

    attempts = oom_above(monkeypatch, 2)
    first = FitSpec(
        backend="hf", dataset_dir="d", eval_dataset_dir=None, model_dir="m", model_cfg=ModelConfig(),
        cfg=TrainConfig(gradient_checkpointing=True, min_micro_batch_size=2), max_seq_length=64,
        checkpoint_dir=str(tmp_path / "ck"), adapter_dir=str(tmp_path / "adapter"), resume=None,
        micro_batch=8, accumulation=1,
    )  # fmt: skip
    plan = LaunchPlan(name="single", launcher="in-process", processes=1)
    run = retry.fit_with_oom_retry(first, plan, tmp_path / "launch", auto_recompute=False)
    assert attempts == [(8, 1), (4, 2), (2, 4)]
    assert (run.micro_batch, run.accumulation, len(run.oom_retries)) == (2, 4, 2)
    attempts.clear()
    with pytest.raises(CudaOutOfMemory):  # the floor: micro-batch 4 may not halve below min_micro_batch_size 4
        retry.fit_with_oom_retry(
            first.model_copy(update={"cfg": first.cfg.model_copy(update={"min_micro_batch_size": 4})}),
            plan,
            tmp_path / "launch",
            auto_recompute=False,
        )
    assert [micro_batch for micro_batch, _ in attempts] == [8, 4]


def test_replay_adds_the_weighted_sft_loss_of_general_rows_in_one_order_across_steps_and_ranks():
    import torch
    from datasets import Dataset

    from r1lib.config import TrainConfig
    from r1lib.training.methods.base import with_replay

    replay = Dataset.from_dict(
        {"input_ids": [[i, i + 1] for i in range(10, 15)], "labels": [[-100, i + 1] for i in range(10, 15)]}
    )
    seen: list[list[int]] = []

    class Model(torch.nn.Module):  # its loss: the mean labelled token id, so the test can add it up
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask, labels, use_cache):
            seen.append(input_ids[:, 0].tolist())
            return type("Out", (), {"loss": labels[labels != -100].float().mean()})

    class Preference:  # the TRL trainer's part: its own loss, the step count, the batch layout
        processing_class = type("Tokenizer", (), {"pad_token_id": 0})

        def __init__(self, rank: int):
            self.state = type("State", (), {"global_step": 0})()
            self.args = type("Args", (), {"gradient_accumulation_steps": 2, "world_size": 2, "process_index": rank})()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return torch.tensor(1.0)

    cfg = TrainConfig(method="dpo", replay_weight=0.5, seed=3)
    trainer_class = with_replay(Preference, spec(None, cfg=cfg, replay_rows=replay, micro_batch=2), fused_head=False)
    ranks = [trainer_class(rank) for rank in (0, 1)]
    model = Model()
    for step in range(2):
        for trainer in ranks:
            trainer.state.global_step = step
            losses = [trainer.compute_loss(model, {}) for _ in range(2)]  # two micro-batches a step
            assert all(loss.item() == 1.0 + 0.5 * (sum(ids) / 2 + 1) for loss, ids in zip(losses, seen[-2:]))
    drawn = [i for ids in seen for i in ids]
    # rank 0 takes batches 0 and 2 of step 0, rank 1 batches 1 and 3; 16 rows drawn cycle the 5 in one order
    order = [drawn[0], drawn[1], drawn[4], drawn[5], drawn[2], drawn[3], drawn[6], drawn[7]]
    assert sorted(order[:5]) == list(range(10, 15)) and order[5:] == order[:3]
    model.training = False
    assert ranks[0].compute_loss(model, {}).item() == 1.0  # evaluation: the preference loss alone
    assert with_replay(Preference, spec(None, cfg=cfg.model_copy(update={"replay_weight": 0.0}), replay_rows=replay),
                       fused_head=False) is Preference  # fmt: skip
