"""Odds-ratio preference optimization: TRL's ``ORPOTrainer`` (``trl.experimental``, through r1lib/compat.py) on
preference pairs tokenized with the R1 template (r1lib/data/preference_tokens.py). The loss is the SFT loss on the
chosen side plus ``beta`` times the odds-ratio penalty; ORPO has no reference policy."""

from __future__ import annotations

import logging
import math

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


def pretokenized_orpo(nll_on_sequence: bool = True):
    """TRL's ``ORPOTrainer`` on our pre-tokenized rows, its loss through TRL's fused LM head: the log-probabilities of
    the labelled tokens come a tile at a time (r1lib/training/logprob.py on a CPU), never the batch x sequence x
    vocabulary logits (on the 152k vocabulary of the R1 Qwen distills at 2 x 2,048 tokens, 2.5 GB of fp32 logits and as
    much again for their log-softmax). The loss is ORPO's own: the NLL of the chosen side (every non-pad token, as
    ORPO defines it; only the scored ones when ``nll_on_sequence`` is False) and the odds ratio of the mean
    log-probabilities of the scored tokens."""
    import torch

    _, ORPOTrainer = orpo_classes()

    class PretokenizedORPO(ORPOTrainer):
        @staticmethod  # datasets hashes the function it maps: a bound method would pickle the whole trainer (20 s)
        def tokenize_row(feature, model=None):  # the rows are tokenized already (orpo_columns)
            return feature

        def concatenated_forward(self, model, batch):
            if self.aux_loss_enabled:  # a mixture of experts: its router loss needs the model's own forward
                return super().concatenated_forward(model, batch)
            joined = self.concatenated_inputs(batch, padding_value=self.padding_value, device=self.accelerator.device)
            ids, mask = joined["concatenated_input_ids"], joined["concatenated_attention_mask"]
            out = model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False,
                        fused_lm_head=True)  # fmt: skip
            chosen = batch["chosen_labels"].shape[0]
            scored = joined["concatenated_labels"][:, 1:] != -100
            nll_tokens = (out.label_mask if nll_on_sequence else scored)[:chosen]
            nll = -(out.log_probs[:chosen] * nll_tokens).sum() / nll_tokens.sum().clamp(min=1)
            counts = scored.sum(-1)
            mean_logps = (out.log_probs * scored).sum(-1) / counts.clamp(min=1)
            # A side cut to no scored token (think_in_loss=mask, tokenize.truncation=truncate) has no mean: its 0
            # (probability 1) made the log-odds infinite (an inf loss, NaN gradients). Both sides of such a pair
            # take one constant, a log-odds of 0 with no gradient: the pair trains through the NLL only.
            unscored = ((counts[:chosen] == 0) | (counts[chosen:] == 0)).repeat(2)
            mean_logps = mean_logps.masked_fill(unscored, math.log(0.5))
            # per position, the mean logit over the vocabulary: the mean of these is the "logits/*" metric TRL logs
            logits = out.mean_logits.masked_fill(~out.label_mask, torch.nan)
            return mean_logps[:chosen], mean_logps[chosen:], logits[:chosen].nanmean(), logits[chosen:].nanmean(), nll

    return PretokenizedORPO


def build(spec: TrainerSpec, model, tokenizer):
    from trl.trainer.utils import add_fused_lm_head

    ORPOConfig, _ = orpo_classes()

    def convert(rows):
        return None if rows is None else rows.map(orpo_columns, remove_columns=rows.column_names)

    settings = spec.cfg.orpo
    args = trainer_arguments(spec, ORPOConfig, beta=settings.beta, max_length=spec.max_seq_length)
    log.info("orpo: beta %g, NLL on the chosen side's %s tokens; no reference policy (the odds ratio is the "
             "policy's own)", settings.beta, "every" if settings.nll_tokens == "sequence" else "scored")  # fmt: skip
    trainer = with_replay(pretokenized_orpo(settings.nll_tokens == "sequence"), spec, fused_head=True)(
        model=model,
        processing_class=tokenizer,
        train_dataset=convert(spec.train_rows),
        eval_dataset=convert(spec.eval_rows),
        args=args,
        callbacks=list(spec.callbacks),
    )
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    add_fused_lm_head(unwrapped.get_base_model() if hasattr(unwrapped, "get_base_model") else unwrapped,
                      outputs=("log_probs", "mean_logits"))  # fmt: skip
    return trainer


METHOD = TrainingMethod(
    name="orpo",
    consumes="preference",
    columns=PAIR_COLUMNS,
    build=build,
    reports=("loss", "rewards/accuracies", "rewards/margins"),
)
