"""Supervised fine-tuning: TRL's ``SFTTrainer`` on the tokenize stage's rows (``input_ids``, ``labels`` masked to the
answer). Its loss projects only labelled positions through the LM head, in training and in evaluation
(``prediction_loss_only``): no ``batch x seq x vocab`` logits are built."""

from __future__ import annotations

from r1lib.training.methods.base import TrainerSpec, TrainingMethod, trainer_arguments


def sft_config(spec: TrainerSpec):
    from trl import SFTConfig

    return trainer_arguments(
        spec,
        SFTConfig,
        # Evaluation computes the loss only, through TRL's fused LM head (labelled positions, in tiles).
        prediction_loss_only=True,
        max_length=spec.max_seq_length,
        packing=spec.cfg.packing,
        padding_free=spec.cfg.packing,
    )


def build(spec: TrainerSpec, model, tokenizer):
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=spec.train_rows,
        eval_dataset=spec.eval_rows,
        args=sft_config(spec),
        callbacks=list(spec.callbacks),
    )


METHOD = TrainingMethod(name="sft", consumes="sft", columns=("input_ids", "labels"), build=build)
