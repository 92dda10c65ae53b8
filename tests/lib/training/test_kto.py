"""The kto method: unpaired rows, the KL term's mismatched completions rotated within each batch (as TRL builds
them), and the collator scoring only labelled tokens. Training: tests/lib/training/test_preference_training.py."""

from __future__ import annotations

from tests.lib.training.test_dpo import ROWS


def test_kl_completions_are_each_batchs_completions_rotated():
    from datasets import Dataset

    from r1lib.data.preference_tokens import unpair
    from r1lib.training.methods.kto import with_kl_completions

    rows = with_kl_completions(Dataset.from_list(unpair(ROWS)), batch_size=2)
    assert rows["label"] == [True, False, True, False]
    assert rows["KL_completion_ids"] == [[6, 7, 8], [3, 4, 5], [10, 11], [9]]


def test_the_collator_scores_only_labelled_completion_tokens():
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    from r1lib.data.preference_tokens import unpair
    from r1lib.training.methods.base import ScoredOnly

    rows = unpair(ROWS)[:2]
    batch = ScoredOnly(DataCollatorForUnpairedPreference(pad_token_id=0), ("completion",))(rows)
    assert batch["completion_mask"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 1, 1]]
    assert batch["label"].tolist() == [True, False]
