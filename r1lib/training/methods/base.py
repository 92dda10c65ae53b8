"""What a training method is: its name, the rows it trains on, how it builds its TRL trainer, what it reports.

``TrainerSpec`` is everything a method's ``build`` gets (typed, instead of a dozen positional parameters): the model
and tokenizer are loaded by the backend before (r1lib/training/backends.py), with the LoRA adapters on, so a method
only chooses its TRL trainer and its trainer arguments. ``trainer_arguments`` gives every method the same shared
settings (optimizer, schedule, precision, checkpoints, evaluation, the launch preset's overrides on top).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from r1lib.compat import train_on_one_gpu
from r1lib.config import ModelConfig, TrainConfig
from r1lib.errors import PermanentError
from r1lib.training.plan import resolved_checkpointing


class TrainerSpec(BaseModel):
    """One trainer to build: the rows, the model, the settings, where checkpoints go and the batch as trained."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    backend: str  # "unsloth" or "hf", as chosen (r1lib/training/backends.py: choose_backend)
    train_rows: Any  # a datasets.Dataset of the rows the method consumes
    eval_rows: Any = None  # held-out rows for the loss during training, or None
    replay_rows: Any = None  # a preference method's general replay rows (input_ids, labels), or None (with_replay)
    model_dir: str
    model_cfg: ModelConfig
    cfg: TrainConfig
    max_seq_length: int
    output_dir: Path  # checkpoints
    micro_batch: int
    accumulation: int  # per process
    callbacks: list = []
    trainer_args: dict = {}  # the launch preset's TrainingArguments (DDP / FSDP), applied over ours
    quant_storage: str | None = None  # the 4-bit weights' storage dtype (FSDP shards them)
    report_to: str = "none"  # tracking.report_to: the tracker the trainer logs to live (r1lib/ops/tracking.py)
    run_name: str | None = None  # the tracker run's name (the run folder's)


@dataclass(frozen=True)
class TrainingMethod:
    """A training method, registered by name in ``r1lib.training.methods.METHODS`` (the name ``train.method``
    selects)."""

    name: str
    consumes: str  # the rows it trains on, by the stage that writes them: "sft" = the tokenize stage's rows
    columns: tuple[str, ...]  # the columns it needs in those rows
    build: Callable[[TrainerSpec, Any, Any], Any]  # (spec, model with LoRA, tokenizer) -> a transformers Trainer
    reports: tuple[str, ...] = ("loss",)  # the log-history metrics it logs per optimizer step, the first is the loss

    def check_rows(self, rows, where: str) -> None:
        """Refuse rows that lack a column this method trains on, naming them (before any model is loaded)."""
        missing = [c for c in self.columns if c not in rows.column_names]
        if missing:
            raise PermanentError(
                f"train.method = {self.name} trains on {self.consumes} rows with columns {list(self.columns)}; "
                f"{where} has no {missing} (its columns: {rows.column_names})"
            )


def optimizer_name(cfg: TrainConfig, cuda: bool) -> str:
    """Our optimizer names mapped to transformers' (bitsandbytes' 8-bit AdamW needs CUDA; plain AdamW elsewhere)."""
    if cfg.optimizer == "adamw_8bit":
        return "adamw_bnb_8bit" if cuda else "adamw_torch"
    return cfg.optimizer  # adamw_torch, adafactor


def shared_settings(spec: TrainerSpec) -> dict:
    """The TrainingArguments every method shares, from the train section and the batch as trained."""
    import torch

    cfg, backend = spec.cfg, spec.backend
    has_eval = spec.eval_rows is not None
    cuda = torch.cuda.is_available()
    use_bf16 = cfg.bf16 == "on" or (cfg.bf16 == "auto" and cuda and torch.cuda.is_bf16_supported())
    early_stopping = bool(has_eval and cfg.eval_steps and cfg.early_stopping_patience)
    save_steps = cfg.save_steps
    if early_stopping and save_steps % cfg.eval_steps:
        # load_best_model_at_end needs checkpoints at evaluation steps
        save_steps = cfg.eval_steps * max(1, round(save_steps / cfg.eval_steps))
    return dict(
        output_dir=str(spec.output_dir),
        per_device_train_batch_size=spec.micro_batch,
        per_device_eval_batch_size=spec.micro_batch,
        gradient_accumulation_steps=spec.accumulation,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float in [0, 1) is a ratio of the total steps
        optim=optimizer_name(cfg, cuda),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=use_bf16,
        fp16=cuda and not use_bf16,
        # Unsloth checkpoints through its own offloaded implementation (get_peft_model); the trainer must not add
        # transformers' on top. The HF baseline uses transformers' (non-reentrant) checkpointing.
        gradient_checkpointing=resolved_checkpointing(cfg) and backend != "unsloth",
        gradient_checkpointing_kwargs={"use_reentrant": False} if backend != "unsloth" else None,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if has_eval and cfg.eval_steps else "no",
        eval_steps=cfg.eval_steps or None,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        # The tracker run itself is opened by the flow (r1lib/ops/tracking.py); its integration finds it there.
        report_to=spec.report_to,
        run_name=spec.run_name,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


def trainer_arguments(spec: TrainerSpec, config_class, **method_settings):
    """``config_class`` (TRL's SFTConfig, DPOConfig, ...) from the shared settings, the method's own over them, and
    the launch preset's over both."""
    import torch

    args = config_class(**{**shared_settings(spec), **method_settings, **spec.trainer_args})
    if torch.cuda.is_available() and "LOCAL_RANK" not in os.environ and torch.cuda.device_count() > 1:
        # One process trains on one GPU. transformers would otherwise wrap the model in nn.DataParallel over every
        # visible GPU (which TRL refuses); more GPUs go through a launch preset (DDP / FSDP ranks) instead.
        train_on_one_gpu(args)
    return args


class ScoredOnly:
    """Wraps a TRL preference collator (rows: ``prompt_ids`` and ``<side>_ids``): its ``completion_mask`` keeps only
    the tokens our rows score (``<side>_labels`` != -100), so reasoning shown under think_in_loss=mask is context,
    not scored. ``sides``: the sequences of a batch in the collator's order (DPO: chosen rows, then rejected)."""

    def __init__(self, collator, sides: tuple[str, ...]):
        self.collator, self.sides = collator, sides

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        batch = self.collator(examples)
        width = batch["completion_mask"].shape[1]
        scored = [
            ([0] * len(e["prompt_ids"]) + [int(label != -100) for label in e[f"{side}_labels"]])[:width]
            for side in self.sides
            for e in examples
        ]
        scored = torch.tensor([m + [0] * (width - len(m)) for m in scored], dtype=batch["completion_mask"].dtype)
        batch["completion_mask"] = batch["completion_mask"] * scored
        return batch


def with_replay(trainer_class, spec: TrainerSpec, fused_head: bool):
    """``trainer_class`` (a TRL preference trainer) whose training loss adds ``train.replay_weight`` times the SFT
    loss (mean negative log-likelihood of the labelled tokens) of ``spec.replay_rows``: general chats that keep what
    the model knew while the preference loss moves it (forgetting). Each training micro-batch takes as many replay
    rows as it has preference rows, in one seeded order that a resumed run and each rank pick up from the step count.
    ``fused_head``: the trainer patched TRL's fused LM head in (DPO, KTO), so no batch x seq x vocab logits are built.
    Unchanged when there are no replay rows or the weight is 0."""
    import random

    rows, weight = spec.replay_rows, spec.cfg.replay_weight
    if rows is None or not rows.num_rows or not weight:
        return trainer_class
    order = random.Random(spec.cfg.seed).sample(range(rows.num_rows), rows.num_rows)
    size = spec.micro_batch

    class WithReplay(trainer_class):
        _replay_at = (-1, 0)  # (optimizer step, micro-batch within it) of the last replay batch drawn

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not model.training:
                return result
            step = self.state.global_step
            micro = self._replay_at[1] + 1 if self._replay_at[0] == step else 0
            self._replay_at = (step, micro)
            start = ((step * self.args.gradient_accumulation_steps + micro) * self.args.world_size
                     + self.args.process_index) * size  # fmt: skip
            picked = rows.select([order[(start + k) % len(order)] for k in range(size)]).to_dict()
            extra = weight * replay_loss(model, picked, self.processing_class.pad_token_id, fused_head)
            return (result[0] + extra, result[1]) if return_outputs else result + extra

    WithReplay.__name__ = WithReplay.__qualname__ = trainer_class.__name__
    return WithReplay


def replay_loss(model, rows, pad_token_id: int, fused_head: bool):
    """The mean negative log-likelihood of the labelled tokens of ``rows`` (input_ids, labels), right-padded."""
    import torch

    device = next(model.parameters()).device
    width = max(len(ids) for ids in rows["input_ids"])
    ids = torch.tensor([r + [pad_token_id] * (width - len(r)) for r in rows["input_ids"]], device=device)
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows["labels"]], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows["input_ids"]], device=device)
    extra = {"fused_lm_head": True} if fused_head else {}
    return model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False, **extra).loss


def reference_policy(trainer, spec: TrainerSpec) -> str:
    """Settle and name the reference policy of a TRL preference trainer on our peft model, with no second model in
    memory: a fresh adapter's reference is the base with the adapter disabled (TRL's frozen "ref" copy of a zero-
    initialized adapter is the same function, so it is dropped); a run started from ``train.init_adapter`` keeps TRL's
    frozen copy of that adapter as its reference (DPO's reference is the policy it starts from)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if spec.cfg.init_adapter is None and "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    return reference_description(spec.cfg)


REFERENCE_METHODS = ("dpo", "kto")  # the methods with a reference policy (ORPO and SFT have none)
REPLAY_METHODS = ("dpo", "orpo", "kto")  # the methods that add the SFT loss of general replay rows (with_replay)


def reference_description(cfg: TrainConfig) -> str:
    """The reference policy a DPO/KTO run of ``cfg`` trains against, in words (the train stage logs it)."""
    if cfg.init_adapter is None:
        return "the base model with the LoRA adapter disabled (no second model in memory)"
    return (
        f"the starting adapter {cfg.init_adapter}, frozen as a second LoRA adapter on the same base "
        "(no second model in memory)"
    )
