"""Odds-ratio preference optimization: TRL's ``ORPOTrainer`` (``trl.experimental``, through r1lib/compat.py) on
preference pairs tokenized with the R1 template (r1lib/data/preference_tokens.py). The loss is the SFT loss on the
chosen side plus ``beta`` times the odds-ratio penalty; ORPO has no reference policy."""

from __future__ import annotations

import logging

from r1lib.compat import orpo_classes
from r1lib.data.preference_tokens import PAIR_COLUMNS
from r1lib.training.methods.base import TrainerSpec, TrainingMethod, trainer_arguments, with_replay

log = logging.getLogger(__name__)


def orpo_columns(row: dict) -> dict:
    """A pair row in ORPOTrainer's tokenized layout: each side's whole sequence, its attention mask and its labels
    (-100 on the prompt and on reasoning shown but not scored)."""
    out = {"prompt_input_ids": row["prompt_ids"], "prompt_attention_mask": [1] * len(row["prompt_ids"])}
    for side in ("chosen", "rejected"):
        ids = row["prompt_ids"] + row[f"{side}_ids"]
        out[f"{side}_input_ids"] = ids
        out[f"{side}_attention_mask"] = [1] * len(ids)
        out[f"{side}_labels"] = [-100] * len(row["prompt_ids"]) + row[f"{side}_labels"]
    return out


def build(spec: TrainerSpec, model, tokenizer):
    ORPOConfig, ORPOTrainer = orpo_classes()

    class PretokenizedORPO(ORPOTrainer):
        def tokenize_row(self, feature, model=None):  # the rows are tokenized already (orpo_columns)
            return feature

    def convert(rows):
        return None if rows is None else rows.map(orpo_columns, remove_columns=rows.column_names)

    settings = spec.cfg.orpo
    args = trainer_arguments(spec, ORPOConfig, beta=settings.beta, max_length=spec.max_seq_length)
    log.info("orpo: beta %g; no reference policy (the odds ratio is the policy's own)", settings.beta)
    return with_replay(PretokenizedORPO, spec, fused_head=False)(
        model=model,
        processing_class=tokenizer,
        train_dataset=convert(spec.train_rows),
        eval_dataset=convert(spec.eval_rows),
        args=args,
        callbacks=list(spec.callbacks),
    )


METHOD = TrainingMethod(
    name="orpo",
    consumes="preference",
    columns=PAIR_COLUMNS,
    build=build,
    reports=("loss", "rewards/accuracies", "rewards/margins"),
)
