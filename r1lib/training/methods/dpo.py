"""Direct preference optimization: TRL's ``DPOTrainer`` on preference pairs tokenized with the R1 template
(r1lib/data/preference_tokens.py), scored on the answer side only (reasoning too under think_in_loss=keep). The
reference policy is the starting policy without a second model in memory (base.py: reference_policy)."""

from __future__ import annotations

import logging

from r1lib.compat import pretokenized_preference_trainer
from r1lib.data.preference_tokens import PAIR_COLUMNS
from r1lib.training.methods.base import (
    ScoredOnly,
    TrainerSpec,
    TrainingMethod,
    reference_policy,
    trainer_arguments,
    with_replay,
)

log = logging.getLogger(__name__)


def losses(settings) -> dict[str, float]:
    """TRL's ``loss_type`` -> ``loss_weights`` for ``train.dpo``: the preference loss, plus the SFT loss on the chosen
    side (RPO) when ``sft_weight`` is set."""
    return {settings.loss_type: 1.0, **({"sft": settings.sft_weight} if settings.sft_weight else {})}


def build(spec: TrainerSpec, model, tokenizer):
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    settings = spec.cfg.dpo
    weights = losses(settings)
    args = trainer_arguments(
        spec,
        DPOConfig,
        beta=settings.beta,
        loss_type=list(weights),
        loss_weights=list(weights.values()),
        max_length=spec.max_seq_length,
    )
    collator = DataCollatorForPreference(pad_token_id=tokenizer.pad_token_id, max_length=spec.max_seq_length)
    trainer = with_replay(pretokenized_preference_trainer(DPOTrainer), spec, fused_head=True)(
        model=model,
        processing_class=tokenizer,
        train_dataset=spec.train_rows,
        eval_dataset=spec.eval_rows,
        args=args,
        data_collator=ScoredOnly(collator, ("chosen", "rejected")),
        callbacks=list(spec.callbacks),
    )
    log.info("dpo: beta %g, losses %s; reference policy: %s", settings.beta, weights,
             reference_policy(trainer, spec))  # fmt: skip
    return trainer


METHOD = TrainingMethod(
    name="dpo",
    consumes="preference",
    columns=PAIR_COLUMNS,
    build=build,
    reports=("loss", "rewards/accuracies", "rewards/margins"),
)
