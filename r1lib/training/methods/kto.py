"""Kahneman-Tversky optimization: TRL's ``KTOTrainer`` on answers labelled desirable or not, tokenized with the R1
template (r1lib/data/preference_tokens.py: ``tokenize_unpaired``, or pairs split by ``unpair``). The reference policy
is the starting policy without a second model in memory (base.py: reference_policy)."""

from __future__ import annotations

import logging

from r1lib.compat import pretokenized_preference_trainer
from r1lib.data.preference_tokens import UNPAIRED_COLUMNS
from r1lib.training.methods.base import (
    ScoredOnly,
    TrainerSpec,
    TrainingMethod,
    reference_policy,
    trainer_arguments,
    with_replay,
)

log = logging.getLogger(__name__)


def with_kl_completions(rows, batch_size: int):
    """The rows with ``KL_completion_ids``: each batch's completions rotated by one, the mismatched pairs KTO
    estimates its KL term from (as TRL's own preparation builds them)."""

    def rotate(batch):
        batch["KL_completion_ids"] = [batch["completion_ids"][-1]] + batch["completion_ids"][:-1]
        return batch

    return rows.map(rotate, batched=True, batch_size=batch_size)


def build(spec: TrainerSpec, model, tokenizer):
    from trl import KTOConfig, KTOTrainer
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    settings = spec.cfg.kto
    args = trainer_arguments(
        spec,
        KTOConfig,
        beta=settings.beta,
        loss_type=settings.loss_type,
        desirable_weight=settings.desirable_weight,
        undesirable_weight=settings.undesirable_weight,
        max_length=spec.max_seq_length,
    )
    rows, eval_rows = spec.train_rows, spec.eval_rows
    if settings.loss_type == "kto":  # the KL term needs mismatched completions; apo_zero_unpaired has none
        rows = with_kl_completions(rows, spec.micro_batch)
        eval_rows = None if eval_rows is None else with_kl_completions(eval_rows, spec.micro_batch)
    collator = DataCollatorForUnpairedPreference(pad_token_id=tokenizer.pad_token_id, max_length=spec.max_seq_length)
    trainer = with_replay(pretokenized_preference_trainer(KTOTrainer), spec, fused_head=True)(
        model=model,
        processing_class=tokenizer,
        train_dataset=rows,
        eval_dataset=eval_rows,
        args=args,
        data_collator=ScoredOnly(collator, ("completion",)),
        callbacks=list(spec.callbacks),
    )
    log.info("kto: beta %g, loss %s; reference policy: %s", settings.beta, settings.loss_type,
             reference_policy(trainer, spec))  # fmt: skip
    return trainer


METHOD = TrainingMethod(
    name="kto",
    consumes="preference",
    columns=UNPAIRED_COLUMNS,
    build=build,
    reports=("loss", "rewards/margins", "kl"),
)
