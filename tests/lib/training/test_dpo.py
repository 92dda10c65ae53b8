"""The dpo method: TRL's DPOConfig from the spec and train.dpo, and a collator that scores only what our rows score
(reasoning shown under think_in_loss=mask is context). Training: tests/lib/training/test_preference_training.py."""

from __future__ import annotations

from tests.lib.training.test_methods import spec

ROWS = [
    # prompt 2 tokens; chosen: 1 shown (-100) + 2 scored; rejected: 3 scored
    {"prompt_ids": [1, 2], "chosen_ids": [3, 4, 5], "chosen_labels": [-100, 4, 5], "rejected_ids": [6, 7, 8],
     "rejected_labels": [6, 7, 8]},
    {"prompt_ids": [1], "chosen_ids": [9], "chosen_labels": [9], "rejected_ids": [10, 11], "rejected_labels": [10, 11]},
]  # fmt: skip


def test_dpo_arguments_come_from_the_spec_and_its_section():
    from datasets import Dataset
    from trl import DPOConfig

    from r1lib.config import TrainConfig
    from r1lib.training.methods.base import trainer_arguments

    cfg = TrainConfig(method="dpo", max_steps=3, dpo={"beta": 0.3, "loss_type": "ipo"})
    rows = Dataset.from_list(ROWS)
    s = spec(rows, cfg=cfg, trainer_args={"ddp_timeout": 77})
    args = trainer_arguments(s, DPOConfig, beta=cfg.dpo.beta, loss_type=[cfg.dpo.loss_type], max_length=128)
    assert (args.beta, args.loss_type, args.max_length, args.ddp_timeout) == (0.3, ["ipo"], 128, 77)
    assert not args.remove_unused_columns and args.per_device_train_batch_size == 2


def test_sft_weight_adds_the_sft_loss_on_the_chosen_side():
    from r1lib.config import TrainConfig
    from r1lib.training.methods.dpo import losses

    assert losses(TrainConfig(method="dpo").dpo) == {"sigmoid": 1.0}
    rpo = TrainConfig(method="dpo", dpo={"loss_type": "ipo", "sft_weight": 0.5})
    assert losses(rpo.dpo) == {"ipo": 1.0, "sft": 0.5}


def test_the_collator_scores_only_labelled_tokens_chosen_rows_first():
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    from r1lib.training.methods.base import ScoredOnly

    batch = ScoredOnly(DataCollatorForPreference(pad_token_id=0), ("chosen", "rejected"))(ROWS)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 9, 0, 0, 0], [1, 2, 6, 7, 8], [1, 10, 11, 0, 0]]
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 1, 0, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 0, 0]]
