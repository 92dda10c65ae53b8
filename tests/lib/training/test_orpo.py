"""The orpo method: ORPOTrainer (trl.experimental, through r1lib/compat.py) gets our pre-tokenized pairs in its own
layout, labels -100 on the prompt and on shown-only reasoning. Training itself:
tests/lib/training/test_preference_training.py."""

from __future__ import annotations

from tests.lib.training.test_dpo import ROWS
from tests.lib.training.test_methods import spec


def test_pairs_in_orpos_layout():
    from r1lib.training.methods.orpo import orpo_columns

    row = orpo_columns(ROWS[0])
    assert row["chosen_input_ids"] == [1, 2, 3, 4, 5] and row["chosen_labels"] == [-100, -100, -100, 4, 5]
    assert row["rejected_input_ids"] == [1, 2, 6, 7, 8] and row["rejected_labels"] == [-100, -100, 6, 7, 8]
    assert row["prompt_input_ids"] == [1, 2] and row["chosen_attention_mask"] == [1] * 5


def test_orpo_arguments_come_from_the_spec_and_its_section():
    from datasets import Dataset

    from r1lib.compat import orpo_classes
    from r1lib.config import TrainConfig
    from r1lib.training.methods.base import trainer_arguments

    cfg = TrainConfig(method="orpo", max_steps=3, orpo={"beta": 0.25})
    ORPOConfig, _ = orpo_classes()
    args = trainer_arguments(spec(Dataset.from_list(ROWS), cfg=cfg), ORPOConfig, beta=cfg.orpo.beta, max_length=64)
    assert (args.beta, args.max_length, args.max_steps) == (0.25, 64, 3)
