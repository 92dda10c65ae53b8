"""Supervised fine-tuning: TRL's ``SFTTrainer`` on the tokenize stage's rows (``input_ids``, ``labels`` masked to the
answer). Its loss projects only labelled positions through the LM head, in training and in evaluation
(``prediction_loss_only``): no ``batch x seq x vocab`` logits are built."""

from __future__ import annotations

from r1lib.training.methods.base import TrainerSpec, TrainingMethod, trainer_arguments


def sft_config(spec: TrainerSpec, **settings):
    """TRL's SFTConfig for ``spec``; ``settings``: a variant's own SFTConfig arguments over these."""
    from trl import SFTConfig

    sft = dict(
        # Evaluation computes the loss only, through TRL's fused LM head (labelled positions, in tiles).
        prediction_loss_only=True,
        max_length=spec.max_seq_length,
        packing=spec.cfg.packing,
        padding_free=spec.cfg.packing,
    )
    return trainer_arguments(spec, SFTConfig, **{**sft, **settings})


def build(spec: TrainerSpec, model, tokenizer, **settings):
    """The SFTTrainer; a variant of SFT (another loss, noise, weighting) calls it with its SFTConfig ``settings``."""
    from trl import SFTTrainer

    return SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=spec.train_rows,
        eval_dataset=spec.eval_rows,
        args=sft_config(spec, **settings),
        callbacks=list(spec.callbacks),
    )


METHOD = TrainingMethod(name="sft", consumes="sft", columns=("input_ids", "labels"), build=build)
