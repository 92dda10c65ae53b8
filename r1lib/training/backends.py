"""Training backends: the 4-bit base with LoRA adapters, and the TRL ``SFTTrainer`` around it.

  unsloth  ``FastLanguageModel.from_pretrained(load_in_4bit=True)`` + ``get_peft_model(use_gradient_checkpointing=
           "unsloth")``; needs an NVIDIA GPU.
  hf       transformers + bitsandbytes NF4 + peft: the fallback, the CPU path, and the benchmark baseline.
  auto     unsloth when CUDA is available and unsloth imports, else hf.

Both train through the same ``SFTTrainer``, ``SFTConfig`` and pre-tokenized rows (labels already masked to the
answer by the tokenize stage), whose loss projects only labelled positions through the LM head, in training and in
evaluation (``prediction_loss_only``): no ``batch x seq x vocab`` logits are built. ``build_trainer`` is that one
path (fresh model + trainer); bench/train_throughput.py measures it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from r1lib.compat import install_torch_chunked_logprob, train_on_one_gpu
from r1lib.config import ModelConfig, TrainConfig
from r1lib.errors import ConfigError
from r1lib.training.plan import resolved_checkpointing

log = logging.getLogger(__name__)


def choose_backend(cfg: TrainConfig) -> str:
    import torch

    if cfg.backend == "unsloth" and not torch.cuda.is_available():
        raise ConfigError("train.backend = unsloth needs an NVIDIA GPU; use 'auto' or 'hf' on this machine")
    if cfg.backend != "auto":
        return cfg.backend
    if torch.cuda.is_available():
        try:
            import unsloth  # noqa: F401

            return "unsloth"
        except ImportError:
            log.warning("unsloth is not installed: training with transformers + peft (pip install '.[gpu]')")
    return "hf"


def load_unsloth(model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig, max_seq_length: int):
    import torch
    from unsloth import FastLanguageModel

    from r1lib.model.loading import remote_code_policy

    extra = {"revision": model_cfg.revision} if model_cfg.revision else {}
    with remote_code_policy(model_dir, model_cfg.trust_remote_code):
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_dir,
            max_seq_length=max_seq_length,
            load_in_4bit=model_cfg.load_in_4bit,
            dtype=None,
            trust_remote_code=model_cfg.trust_remote_code,
            **extra,
            # under torchrun each rank loads its own copy onto its own GPU
            **({"device_map": {"": torch.cuda.current_device()}} if "LOCAL_RANK" in os.environ else {}),
        )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        random_state=cfg.seed,
        max_seq_length=max_seq_length,
        use_gradient_checkpointing="unsloth" if resolved_checkpointing(cfg) else False,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_hf(model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig, quant_storage: str | None = None):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from r1lib.model.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit, quant_storage=quant_storage)
    if model_cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=resolved_checkpointing(cfg))
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    return model, load_tokenizer(model_dir, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)


def optimizer_name(cfg: TrainConfig, cuda: bool) -> str:
    """Our optimizer names mapped to transformers' (bitsandbytes' 8-bit AdamW needs CUDA; plain AdamW elsewhere)."""
    if cfg.optimizer == "adamw_8bit":
        return "adamw_bnb_8bit" if cuda else "adamw_torch"
    return cfg.optimizer  # adamw_torch, adafactor


def sft_config(
    cfg: TrainConfig,
    output_dir: Path,
    max_seq_length: int,
    micro_batch: int,
    accumulation: int,
    has_eval: bool,
    backend: str | None = None,
    extra: dict | None = None,
):
    """``extra``: a launch preset's TrainingArguments (DDP / FSDP settings), applied over ours."""
    import torch
    from trl import SFTConfig

    backend = backend or cfg.backend
    cuda = torch.cuda.is_available()
    use_bf16 = cfg.bf16 == "on" or (cfg.bf16 == "auto" and cuda and torch.cuda.is_bf16_supported())
    early_stopping = bool(has_eval and cfg.eval_steps and cfg.early_stopping_patience)
    save_steps = cfg.save_steps
    if early_stopping and save_steps % cfg.eval_steps:
        # load_best_model_at_end needs checkpoints at evaluation steps
        save_steps = cfg.eval_steps * max(1, round(save_steps / cfg.eval_steps))
    settings = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=micro_batch,
        per_device_eval_batch_size=micro_batch,
        gradient_accumulation_steps=accumulation,
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
        # Evaluation computes the loss only, through TRL's fused LM head (labelled positions, in tiles): the
        # batch x seq x vocab logits are never built, in training or evaluation.
        prediction_loss_only=True,
        load_best_model_at_end=early_stopping,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_length=max_seq_length,
        packing=cfg.packing,
        padding_free=cfg.packing,
        report_to="none",
        use_cpu=not cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    args = SFTConfig(**{**settings, **(extra or {})})
    if cuda and "LOCAL_RANK" not in os.environ and torch.cuda.device_count() > 1:
        # One process trains on one GPU. transformers would otherwise wrap the model in nn.DataParallel over every
        # visible GPU (which TRL refuses); more GPUs go through a launch preset (DDP / FSDP ranks) instead.
        train_on_one_gpu(args)
    return args


def build_trainer(
    backend: str,
    train_rows,
    eval_rows,
    model_dir: str,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    max_seq_length: int,
    output_dir: Path,
    micro_batch: int,
    accumulation: int,
    callbacks=(),
    trainer_args: dict | None = None,
    quant_storage: str | None = None,
):
    """A fresh model (4-bit base + LoRA) and the SFTTrainer around it; the one path both backends, every launch preset
    and the benchmarks use. ``trainer_args`` are the launch preset's extra TrainingArguments. Returns (trainer,
    tokenizer)."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, peft and trl on import)
    from transformers import ProgressCallback
    from trl import SFTTrainer

    class StepBar(ProgressCallback):
        """The step bar alone: losses go to the run's log and its training-progress artifact (fit.py), not as dicts
        printed under the bar."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    install_torch_chunked_logprob()
    if backend == "unsloth":
        model, tokenizer = load_unsloth(model_dir, model_cfg, cfg, max_seq_length)
    else:
        model, tokenizer = load_hf(model_dir, model_cfg, cfg, quant_storage)
    args = sft_config(
        cfg, output_dir, max_seq_length, micro_batch, accumulation, eval_rows is not None, backend, trainer_args
    )
    trainer = SFTTrainer(
        model=model,
        processing_class=tokenizer,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        args=args,
        callbacks=list(callbacks),
    )
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StepBar())
    return trainer, tokenizer
