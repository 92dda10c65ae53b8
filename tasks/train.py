"""Stage 5, train: 4-bit LoRA (QLoRA) with TRL's SFTTrainer, through Unsloth on CUDA or transformers + peft elsewhere.

Backends (``train.backend``), the only place in the pipeline that knows them:
  unsloth  ``FastLanguageModel.from_pretrained(load_in_4bit=True)`` + ``get_peft_model(use_gradient_checkpointing=
           "unsloth")``; needs an NVIDIA GPU.
  hf       transformers + bitsandbytes NF4 + peft: the fallback, the CPU path, and the benchmark baseline.
  auto     unsloth when CUDA is available and unsloth imports, else hf.
Both train through the same ``SFTTrainer``, ``SFTConfig`` and pre-tokenized rows (labels already masked to the
answer by the tokenize stage), whose loss projects only labelled positions through the LM head, in training and in
evaluation (``prediction_loss_only``): no ``batch x seq x vocab`` logits are built. ``build_trainer`` is that one path
(fresh model + trainer); bench/train_throughput.py measures it. Settings: bf16 where supported, cosine (or linear)
schedule with warm-up as a ratio, gradient accumulation, 8-bit AdamW on CUDA (``adamw_8bit``) or Adafactor,
``packing`` = TRL's BFD packing + padding-free batches, early stopping on eval loss when ``eval_steps`` and
``early_stopping_patience`` are set. ``tokens_per_second`` counts the non-pad tokens the model actually trained on.

Checkpoints land every ``save_steps`` in ``checkpoints/<inputs key>/`` and are marked complete only after the
trainer finished writing them; a rerun with the same inputs (a Prefect retry after a crash or kill) resumes from the
last complete one (weights, optimizer, scheduler, RNG and data position) and deletes any half-written one. On CUDA
out-of-memory the micro-batch is halved and gradient accumulation doubled (same effective batch), down to
``min_micro_batch_size``, and the run summary says so.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from pydantic import BaseModel

from tasks.config import ModelConfig, TokenizeConfig, TrainConfig
from tasks.errors import ConfigError
from tasks.io import atomic_dir, exclusive_dir, write_json
from tasks.orchestration import stage_options

log = logging.getLogger(__name__)
COMPLETE_MARKER = "checkpoint-complete.json"


class TrainResult(BaseModel):
    adapter: str
    backend: str
    steps: int
    epochs: float
    train_loss: float
    first_loss: float | None
    last_loss: float | None
    seconds: float
    tokens_per_second: float
    resumed_from: str | None
    micro_batch_size: int
    gradient_accumulation: int
    oom_retries: list[str]
    log_history: str


# --- backends -----------------------------------------------------------------------------------------------------


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
    from unsloth import FastLanguageModel

    extra = {"revision": model_cfg.revision} if model_cfg.revision else {}
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_dir, max_seq_length=max_seq_length, load_in_4bit=model_cfg.load_in_4bit, dtype=None,
        trust_remote_code=model_cfg.trust_remote_code, **extra,
    )
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", random_state=cfg.seed, max_seq_length=max_seq_length,
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_hf(model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from tasks.model import load_causal_lm, load_tokenizer

    model = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit)
    if model_cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    return model, load_tokenizer(model_dir, model_cfg.trust_remote_code, model_cfg.revision)


def _install_torch_logprob_fallback() -> None:
    """TRL's loss projects labelled positions through the LM head with a Triton kernel; CPU builds of torch have no
    Triton, so there TRL leaves the kernel unset. This supplies the same function in plain torch (token chunks)."""
    import torch
    import trl.trainer.utils as trl_utils

    if trl_utils._ChunkedLogProbFunction is not None:
        return

    class TorchChunkedLogProb:
        @staticmethod
        def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs):
            results = {name: [] for name in ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")}
            for start in range(0, hidden.shape[0], 1024):
                logits = torch.nn.functional.linear(hidden[start:start + 1024], weight, bias).float()
                logits = logits * (logit_scale or 1.0)
                if softcap:
                    logits = torch.tanh(logits / softcap) * softcap
                logp = (logits / temperature).log_softmax(-1)
                target = targets[start:start + 1024]
                results["log_probs"].append(logp.gather(-1, target[:, None]).squeeze(-1))
                with torch.no_grad():
                    probs = logp.exp()
                    results["entropy"].append(-(probs * logp).sum(-1))
                    results["log_sum_sq_probs"].append(torch.logsumexp(2 * logp, -1))
                    results["mean_logits"].append(logits.mean(-1))
                    results["is_top1"].append(logits.argmax(-1) == target)
            return tuple(torch.cat(results[name]) if (name == "log_probs" or name in outputs) and results[name]
                         else None for name in results)

    trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb


# --- checkpoints --------------------------------------------------------------------------------------------------


def inputs_key(dataset_dir: str, model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig) -> str:
    """Checkpoints are reused only by a run with the same data, model and training settings."""
    from datasets import load_from_disk

    digest = hashlib.sha256()
    digest.update(load_from_disk(dataset_dir)._fingerprint.encode())
    digest.update(model_dir.encode())
    digest.update(model_cfg.model_dump_json().encode())
    # The OOM retry changes micro-batch/accumulation; the effective batch (and so the run) stays the same.
    digest.update(cfg.model_dump_json(exclude={"micro_batch_size", "gradient_accumulation"}).encode())
    digest.update(str(cfg.micro_batch_size * cfg.gradient_accumulation).encode())
    return digest.hexdigest()[:12]


def last_complete_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest checkpoint marked complete; incomplete ones (a crash mid-save) are deleted."""
    if not checkpoint_dir.exists():
        return None
    found = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        if (path / COMPLETE_MARKER).exists():
            found.append((int(path.name.split("-")[-1]), path))
        else:
            log.warning("deleting incomplete checkpoint %s (the last run stopped while writing it)", path)
            shutil.rmtree(path, ignore_errors=True)
    return max(found)[1] if found else None


def _callbacks(progress_hook=None):
    from transformers import TrainerCallback

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                (path / COMPLETE_MARKER).write_text(json.dumps({"step": state.global_step}))

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and state.max_steps:
                progress_hook(state.global_step, state.max_steps, logs or {})

    return [MarkComplete()] + ([Progress()] if progress_hook else [])


# --- training -----------------------------------------------------------------------------------------------------


def optimizer_name(cfg: TrainConfig, cuda: bool) -> str:
    """Our optimizer names mapped to transformers' (bitsandbytes' 8-bit AdamW needs CUDA; plain AdamW elsewhere)."""
    if cfg.optimizer == "adamw_8bit":
        return "adamw_bnb_8bit" if cuda else "adamw_torch"
    return cfg.optimizer  # adamw_torch, adafactor


def sft_config(cfg: TrainConfig, output_dir: Path, max_seq_length: int, micro_batch: int, accumulation: int,
               has_eval: bool, backend: str | None = None):
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
    return SFTConfig(
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
        gradient_checkpointing=cfg.gradient_checkpointing and backend != "unsloth",
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


class TokenCounter:
    """Counts the tokens the model trains on (non-pad input tokens, and labelled ones) with a forward pre-hook on the
    top module: it runs once per micro-batch, also under gradient checkpointing; evaluation forwards are skipped."""

    def __init__(self, model):
        self.tokens = 0
        self.padded = 0
        self.labelled = 0
        self.micro_batches = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        self.tokens += int(mask.sum()) if mask is not None else ids.numel()  # padding-free: no pad at all
        self.padded += ids.numel()
        labels = kwargs.get("labels")
        if labels is not None:
            self.labelled += int((labels[..., 1:] != -100).sum())
        self.micro_batches += 1

    def remove(self):
        self._handle.remove()


def build_trainer(backend: str, train_rows, eval_rows, model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig,
                  max_seq_length: int, output_dir: Path, micro_batch: int, accumulation: int, callbacks=()):
    """A fresh model (4-bit base + LoRA) and the SFTTrainer around it; the one path both backends and the benchmark
    use. Returns (trainer, tokenizer)."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, peft and trl on import)
    from trl import SFTTrainer

    _install_torch_logprob_fallback()
    if backend == "unsloth":
        model, tokenizer = load_unsloth(model_dir, model_cfg, cfg, max_seq_length)
    else:
        model, tokenizer = load_hf(model_dir, model_cfg, cfg)
    trainer = SFTTrainer(
        model=model, processing_class=tokenizer, train_dataset=train_rows, eval_dataset=eval_rows,
        args=sft_config(cfg, output_dir, max_seq_length, micro_batch, accumulation, eval_rows is not None, backend),
        callbacks=list(callbacks),
    )
    return trainer, tokenizer


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "CUDA out of memory" in str(exc) \
        or "CUBLAS_STATUS_ALLOC_FAILED" in str(exc)


def _free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train(dataset_dir: str, eval_dataset_dir: str | None, model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig,
          tokenize_cfg: TokenizeConfig, out_dir: Path, progress_hook=None) -> TrainResult:
    """Fine-tune a LoRA adapter on the tokenized rows; returns where it is and how training went.

    A second training into the same ``out_dir`` (two runs of one config at once) fails at once with a message naming
    the process that holds it, instead of interleaving checkpoints; a Prefect retry of it waits with backoff.
    """
    with exclusive_dir(Path(out_dir)):
        return _train(dataset_dir, eval_dataset_dir, model_dir, model_cfg, cfg, tokenize_cfg, Path(out_dir),
                      progress_hook)


def _train(dataset_dir: str, eval_dataset_dir: str | None, model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig,
           tokenize_cfg: TokenizeConfig, out_dir: Path, progress_hook=None) -> TrainResult:
    backend = choose_backend(cfg)
    if backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers / trl / peft are imported below)
    from datasets import load_from_disk
    from transformers import EarlyStoppingCallback

    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / "checkpoints" / inputs_key(dataset_dir, model_dir, model_cfg, cfg)
    train_rows = load_from_disk(dataset_dir)
    eval_rows = load_from_disk(eval_dataset_dir) if eval_dataset_dir and cfg.eval_steps else None
    micro_batch, accumulation = cfg.micro_batch_size, cfg.gradient_accumulation
    oom_retries: list[str] = []
    while True:
        resume = last_complete_checkpoint(checkpoint_dir)
        if resume:
            log.info("resuming training from %s", resume)
        callbacks = _callbacks(progress_hook)
        if eval_rows is not None and cfg.early_stopping_patience:
            callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
        trainer = counter = None
        oom = None
        try:
            trainer, tokenizer = build_trainer(backend, train_rows, eval_rows, model_dir, model_cfg, cfg,
                                               tokenize_cfg.max_seq_length, checkpoint_dir, micro_batch,
                                               accumulation, callbacks)
            counter = TokenCounter(trainer.model)
            started = time.monotonic()
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        except Exception as exc:  # noqa: BLE001
            if not _is_oom(exc) or micro_batch // 2 < cfg.min_micro_batch_size:
                raise
            oom = (f"CUDA out of memory at micro-batch {micro_batch} x accumulation {accumulation}; "
                   f"retrying with {micro_batch // 2} x {accumulation * 2} (same effective batch)")
        if oom is None:
            break
        # Out of the except block, so that the traceback's frames (and the tensors they hold) can be freed.
        log.warning(oom)
        oom_retries.append(oom)
        micro_batch, accumulation = micro_batch // 2, accumulation * 2
        if counter is not None:
            counter.remove()
        if trainer is not None:
            trainer.model = trainer.model_wrapped = None
            trainer.optimizer = trainer.lr_scheduler = None
        del trainer, counter
        _free_cuda()
    seconds = time.monotonic() - started
    counter.remove()
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    history_path = write_json(out_dir / "log_history.json", history)
    with atomic_dir(out_dir / "adapter") as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    result = TrainResult(
        adapter=str(out_dir / "adapter"), backend=backend, steps=trainer.state.global_step,
        epochs=round(output.metrics.get("epoch", 0.0), 3), train_loss=output.training_loss,
        first_loss=losses[0] if losses else None, last_loss=losses[-1] if losses else None,
        seconds=round(seconds, 1), tokens_per_second=round(counter.tokens / max(seconds, 1e-9), 1),
        resumed_from=str(resume) if resume else None, micro_batch_size=micro_batch,
        gradient_accumulation=accumulation, oom_retries=oom_retries, log_history=str(history_path),
    )
    write_json(out_dir / "result.json", result.model_dump())
    return result


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="train", **stage_options(retries=2, timeout_seconds=24 * 3600, log_prints=False))
def train_task(dataset_dir: str, eval_dataset_dir: str | None, model_dir: str, model_cfg: ModelConfig,
               cfg: TrainConfig, tokenize_cfg: TokenizeConfig, run_dir: str) -> TrainResult:
    """QLoRA fine-tuning; resumes from the last complete checkpoint when retried."""
    progress_id = create_progress_artifact(progress=0.0, key="training-progress", description="Optimizer steps done")
    curve: list[dict] = []

    def report(step: int, max_steps: int, logs: dict) -> None:
        update_progress_artifact(artifact_id=progress_id, progress=100.0 * step / max_steps)
        if "loss" in logs:
            curve.append({"step": step, "loss": round(logs["loss"], 4), "lr": logs.get("learning_rate")})

    result = train(dataset_dir, eval_dataset_dir, model_dir, model_cfg, cfg, tokenize_cfg,
                   Path(run_dir) / "train", progress_hook=report)
    rows = "\n".join(f"| {c['step']} | {c['loss']} | {c['lr']:.2e} |" for c in curve if c["lr"] is not None)
    create_markdown_artifact(
        key="training-loss",
        markdown=f"**{result.backend}** backend, {result.steps} steps in {result.seconds} s "
                 f"({result.tokens_per_second} tokens/s)"
                 + (f", resumed from `{result.resumed_from}`" if result.resumed_from else "")
                 + ("\n\n" + "\n".join(f"- {m}" for m in result.oom_retries) if result.oom_retries else "")
                 + f"\n\n| step | loss | learning rate |\n|---|---|---|\n{rows}",
    )
    return result
