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
last complete one (weights, optimizer, scheduler, RNG and data position) and deletes any half-written one; one saved
at the last step is published as it is, without training again. On CUDA out-of-memory the micro-batch is halved and
gradient accumulation doubled (same effective batch), down to ``min_micro_batch_size``, and the run summary says so.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from pydantic import BaseModel

from tasks.config import ModelConfig, TokenizeConfig, TrainConfig
from tasks.errors import ConfigError, PermanentError
from tasks.io import atomic_dir, exclusive_dir, write_json
from tasks.orchestration import stage_options

log = logging.getLogger(__name__)
COMPLETE_MARKER = "checkpoint-complete.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what peft writes for a LoRA adapter (checkpoints too)


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
    steady_tokens_per_second: float | None = None  # after the first 3 optimizer steps (compilation, warm-up)
    resumed_from: str | None
    micro_batch_size: int
    gradient_accumulation: int  # per process
    processes: int = 1
    launch: str = "single"
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
    import torch
    from unsloth import FastLanguageModel

    extra = {"revision": model_cfg.revision} if model_cfg.revision else {}
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=model_dir, max_seq_length=max_seq_length, load_in_4bit=model_cfg.load_in_4bit, dtype=None,
        trust_remote_code=model_cfg.trust_remote_code, **extra,
        # under torchrun each rank loads its own copy onto its own GPU
        **({"device_map": {"": torch.cuda.current_device()}} if "LOCAL_RANK" in os.environ else {}),
    )
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", random_state=cfg.seed, max_seq_length=max_seq_length,
        use_gradient_checkpointing="unsloth" if cfg.gradient_checkpointing else False,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_hf(model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig, quant_storage: str | None = None):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from tasks.model import load_causal_lm, load_tokenizer

    model = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit, quant_storage=quant_storage)
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


def inputs_key(dataset_dir: str, model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig, processes: int = 1) -> str:
    """Checkpoints are reused only by a run with the same data, model, training settings and number of processes
    (each rank's data order and RNG state are in the checkpoint)."""
    from datasets import load_from_disk

    digest = hashlib.sha256()
    digest.update(load_from_disk(dataset_dir)._fingerprint.encode())
    digest.update(model_dir.encode())
    digest.update(model_cfg.model_dump_json().encode())
    # The OOM retry changes micro-batch/accumulation; the effective batch (and so the run) stays the same.
    digest.update(cfg.model_dump_json(exclude={"micro_batch_size", "gradient_accumulation", "gpus", "launch"}).encode())
    digest.update(str(cfg.micro_batch_size * cfg.gradient_accumulation).encode())
    if processes > 1:
        digest.update(f"processes={processes}".encode())
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
            _barrier()  # every rank has written its part (its RNG state) before the checkpoint counts as complete
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
               has_eval: bool, backend: str | None = None, extra: dict | None = None):
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
    args = SFTConfig(**{**settings, **(extra or {})})
    if cuda and "LOCAL_RANK" not in os.environ and torch.cuda.device_count() > 1:
        # One process trains on one GPU. transformers would otherwise wrap the model in nn.DataParallel over every
        # visible GPU (which TRL refuses); more GPUs go through a launch preset (DDP / FSDP ranks) instead.
        _ = args.device  # sets up the devices (and _n_gpu) first, so that the override below sticks
        args._n_gpu = 1
    return args


class TokenCounter:
    """Counts the tokens the model trains on (non-pad input tokens, and labelled ones) with a forward pre-hook on the
    top module: it runs once per micro-batch, also under gradient checkpointing; evaluation forwards are skipped.
    The counts stay on the device until read, so counting never makes the CPU wait for the GPU."""

    def __init__(self, model):
        self._tokens = self._labelled = 0
        self.padded = 0
        self.micro_batches = 0
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if not module.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            return
        mask = kwargs.get("attention_mask")
        self._tokens = self._tokens + (mask.sum() if mask is not None else ids.numel())  # padding-free: no pad
        self.padded += ids.numel()
        labels = kwargs.get("labels")
        if labels is not None:
            self._labelled = self._labelled + (labels[..., 1:] != -100).sum()
        self.micro_batches += 1

    @property
    def tokens(self) -> int:
        return int(self._tokens)

    @property
    def labelled(self) -> int:
        return int(self._labelled)

    def remove(self):
        self._handle.remove()


def build_trainer(backend: str, train_rows, eval_rows, model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig,
                  max_seq_length: int, output_dir: Path, micro_batch: int, accumulation: int, callbacks=(),
                  trainer_args: dict | None = None, quant_storage: str | None = None):
    """A fresh model (4-bit base + LoRA) and the SFTTrainer around it; the one path both backends, every launch preset
    and the benchmarks use. ``trainer_args`` are the launch preset's extra TrainingArguments. Returns (trainer,
    tokenizer)."""
    if backend == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, peft and trl on import)
    from trl import SFTTrainer

    _install_torch_logprob_fallback()
    if backend == "unsloth":
        model, tokenizer = load_unsloth(model_dir, model_cfg, cfg, max_seq_length)
    else:
        model, tokenizer = load_hf(model_dir, model_cfg, cfg, quant_storage)
    args = sft_config(cfg, output_dir, max_seq_length, micro_batch, accumulation, eval_rows is not None, backend,
                      trainer_args)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=train_rows, eval_dataset=eval_rows,
                         args=args, callbacks=list(callbacks))
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


# --- launch presets -----------------------------------------------------------------------------------------------

LAUNCH_DIR = Path(__file__).resolve().parent.parent / "deployments" / "launch"
OOM_EXIT_CODE = 75  # a rank's exit status when it ran out of GPU memory (the parent retries with a smaller batch)


class LaunchPlan(BaseModel):
    """A launch preset (deployments/launch/<name>.yaml) resolved against the config and this machine."""
    name: str
    launcher: Literal["in-process", "torchrun"]
    processes: int
    trainer_args: dict = {}
    quant_storage: str | None = None
    env: dict[str, str] = {}


def launch_plan(cfg: TrainConfig, backend: str) -> LaunchPlan:
    import torch
    import yaml

    name = cfg.launch
    if name == "auto":
        name = os.environ.get("R1_FINETUNE_LAUNCH") or ("single" if cfg.gpus == 1 else "ddp")
    path = Path(name) if name.endswith((".yaml", ".yml")) else LAUNCH_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in LAUNCH_DIR.glob("*.yaml")))
        raise ConfigError(f"train.launch = {name!r}: no preset {path} (known: {known})")
    preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if backend not in preset.get("backends", ["unsloth", "hf"]):
        raise ConfigError(f"launch preset {path.name} does not support the {backend} backend "
                          f"(supports {preset['backends']}); set train.backend accordingly")
    visible = torch.cuda.device_count()
    wanted = cfg.gpus or preset.get("processes", 1)
    if wanted == "all":
        wanted = max(visible, 1)
    if preset.get("launcher", "in-process") == "in-process":
        if cfg.gpus > 1:
            raise ConfigError(f"launch preset {path.name} trains in one process; use ddp or fsdp for train.gpus = "
                              f"{cfg.gpus}")
        wanted = 1
    if visible and wanted > visible:
        raise ConfigError(f"train.gpus = {wanted} but this machine shows {visible} GPU(s)")
    if cfg.gradient_accumulation % wanted:
        raise ConfigError(f"train.gradient_accumulation ({cfg.gradient_accumulation}) must be a multiple of the "
                          f"{wanted} training processes, so that the effective batch stays micro_batch_size x "
                          f"gradient_accumulation = {cfg.micro_batch_size * cfg.gradient_accumulation}")
    # One process needs no launcher, whatever the preset: it trains in the task's own process.
    launcher = "in-process" if wanted == 1 else preset["launcher"]
    return LaunchPlan(name=path.stem, launcher=launcher, processes=wanted, trainer_args=preset.get("trainer") or {},
                      quant_storage=preset.get("quant_storage"),
                      env={k: str(v) for k, v in (preset.get("env") or {}).items()})


# --- one training run (in this process, or in each rank of a distributed launch) ---------------------------------


class FitSpec(BaseModel):
    """Everything one training run needs; written to JSON for the ranks of a distributed launch."""
    backend: str
    dataset_dir: str
    eval_dataset_dir: str | None
    model_dir: str
    model_cfg: ModelConfig
    cfg: TrainConfig
    max_seq_length: int
    checkpoint_dir: str
    adapter_dir: str
    resume: str | None
    micro_batch: int
    accumulation: int  # per process
    trainer_args: dict = {}
    quant_storage: str | None = None


class FitOutcome(BaseModel):
    steps: int
    epochs: float
    train_loss: float
    losses: list[float]
    seconds: float
    tokens: int  # non-pad tokens trained on, summed over all processes
    steady_tokens_per_second: float | None  # after the first optimizer steps (compilation, warm-up)
    log_history: list[dict]


class CudaOutOfMemory(RuntimeError):
    """Training ran out of GPU memory (in this process or in a rank of a distributed launch)."""


def _sum_over_ranks(value: float) -> float:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    total = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _steady_timer(counter: "TokenCounter", skip_steps: int):
    """A callback that notes time and tokens once ``skip_steps`` optimizer steps are done, to measure the steady
    rate (the first steps pay for compilation and allocator warm-up)."""
    from transformers import TrainerCallback

    class SteadyTimer(TrainerCallback):
        mark: tuple[float, int, int] | None = None
        end: tuple[float, int, int] | None = None

        def on_step_end(self, args, state, control, **kwargs):
            # Read at two steps only: reading the device-side count waits for the GPU.
            if state.global_step in (skip_steps, state.max_steps):
                now = (time.monotonic(), counter.tokens, state.global_step)
                self.mark = now if state.global_step == skip_steps else self.mark
                self.end = now

        def on_train_end(self, args, state, control, **kwargs):
            if self.end is None or self.end[2] != state.global_step:  # stopped early
                self.end = (time.monotonic(), counter.tokens, state.global_step)

        def rate(self) -> float | None:
            if self.mark is None or self.end is None or self.end[2] <= self.mark[2]:
                return None
            return (self.end[1] - self.mark[1]) / max(self.end[0] - self.mark[0], 1e-9)

    return SteadyTimer()


@functools.cache
def _accept_indexed_cpu_locations() -> None:
    """A resumed multi-process run loads the optimizer state with ``map_location=args.device``, which is ``cpu:0``
    for CPU ranks (the tests' DDP over gloo); torch's loader knows only ``cpu``. Teach it ``cpu:<n>``."""
    import torch.serialization

    torch.serialization.register_package(
        11, lambda obj: None, lambda obj, location: obj if location.startswith("cpu:") else None)


def fit(spec: FitSpec, progress_hook=None) -> FitOutcome:
    """Train once: build the model and trainer, train (resuming from ``spec.resume``), save the adapter. Runs in the
    task's own process or in every rank of a distributed launch; only rank 0 writes the adapter."""
    if spec.backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers / trl / peft are imported below)
    from datasets import load_from_disk
    from transformers import EarlyStoppingCallback

    cfg = spec.cfg
    _accept_indexed_cpu_locations()
    train_rows = load_from_disk(spec.dataset_dir)
    eval_rows = load_from_disk(spec.eval_dataset_dir) if spec.eval_dataset_dir and cfg.eval_steps else None
    callbacks = _callbacks(progress_hook)
    if eval_rows is not None and cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer, tokenizer = build_trainer(spec.backend, train_rows, eval_rows, spec.model_dir, spec.model_cfg, cfg,
                                       spec.max_seq_length, Path(spec.checkpoint_dir), spec.micro_batch,
                                       spec.accumulation, callbacks, spec.trainer_args, spec.quant_storage)
    if spec.resume and (finished := _finished_state(Path(spec.resume))):
        return _publish_finished(trainer, tokenizer, spec, finished, progress_hook)
    counter = TokenCounter(trainer.model)
    timer = _steady_timer(counter, skip_steps=3)
    trainer.add_callback(timer)
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=spec.resume)
    seconds = time.monotonic() - started
    counter.remove()
    tokens = int(_sum_over_ranks(counter.tokens))
    steady = timer.rate()
    steady = _sum_over_ranks(steady) if steady is not None else None
    publish_adapter(trainer, tokenizer, Path(spec.adapter_dir), trainer.is_world_process_zero())
    history = trainer.state.log_history
    return FitOutcome(
        steps=trainer.state.global_step, epochs=round(output.metrics.get("epoch", 0.0), 3),
        train_loss=output.training_loss, losses=[h["loss"] for h in history if "loss" in h],
        seconds=round(seconds, 1), tokens=tokens, steady_tokens_per_second=round(steady, 1) if steady else None,
        log_history=history,
    )


def _finished_state(checkpoint: Path) -> dict | None:
    """The checkpoint's trainer state when it was saved at the run's last step (the task died after the final save,
    before it returned), else None."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    # Needs the adapter as a file (FSDP's sharded state dict keeps none): otherwise resume as before.
    if state["global_step"] >= state["max_steps"] and (checkpoint / ADAPTER_WEIGHTS).exists():
        return state
    return None


def _publish_finished(trainer, tokenizer, spec: FitSpec, state: dict, progress_hook=None) -> FitOutcome:
    """Publish a finished checkpoint instead of resuming from it: transformers' resume runs the rest of the current
    epoch's loop before it checks for the end, so it would train one step past max_steps."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    checkpoint = Path(spec.resume)
    best = state.get("best_model_checkpoint")
    if trainer.args.load_best_model_at_end and best and Path(best, ADAPTER_WEIGHTS).exists():
        checkpoint = Path(best)  # what a run that had not died would have published
    log.info("%s already reached step %d of %d: publishing %s without training", spec.resume,
             state["global_step"], state["max_steps"], checkpoint)
    loaded = set_peft_model_state_dict(trainer.model, load_peft_weights(str(checkpoint), device="cpu"))
    if loaded.unexpected_keys:
        raise RuntimeError(f"{checkpoint}: adapter weights that fit no LoRA layer: {loaded.unexpected_keys[:5]}")
    publish_adapter(trainer, tokenizer, Path(spec.adapter_dir), trainer.is_world_process_zero())
    history = state["log_history"]
    logged = [h for h in history if "loss" in h]
    if progress_hook:
        for item in logged:
            progress_hook(item["step"], state["max_steps"], item)
    # Each logged loss is the mean over the steps since the previous log: weight by them for the run's mean.
    spans = [h["step"] - before for h, before in zip(logged, [0] + [h["step"] for h in logged])]
    return FitOutcome(
        steps=state["global_step"], epochs=round(state["epoch"], 3),
        train_loss=sum(h["loss"] * n for h, n in zip(logged, spans)) / max(sum(spans), 1),
        losses=[h["loss"] for h in logged], seconds=0.0, tokens=0, steady_tokens_per_second=None,
        log_history=history,
    )


def publish_adapter(trainer, tokenizer, adapter_dir: Path, is_rank_zero: bool) -> None:
    """Every rank takes part in saving (FSDP gathers the sharded LoRA weights); rank 0 writes, into a staging
    directory that is renamed onto ``adapter_dir`` only when complete."""
    staging = adapter_dir.with_name(f".{adapter_dir.name}.staging")
    if is_rank_zero and staging.exists():
        shutil.rmtree(staging)
    _barrier()
    if getattr(trainer, "is_fsdp_enabled", False):
        # With the preset's SHARDED_STATE_DICT (right for checkpoints) save_model writes no adapter weights at all;
        # gather the full LoRA state on rank 0 for the adapter instead.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(staging))
    if is_rank_zero:
        if not any(staging.glob("adapter_model.*")):
            raise PermanentError(f"saving the adapter wrote no adapter weights into {staging} "
                                 f"(found: {sorted(p.name for p in staging.iterdir())})")
        tokenizer.save_pretrained(staging)
        with atomic_dir(adapter_dir) as tmp:
            tmp.rmdir()
            os.replace(staging, tmp)
    _barrier()


def rank_main(spec_path: str) -> None:
    """Entry point of one rank of a distributed launch: ``torchrun ... -m tasks.train <spec.json>``."""
    import torch

    spec = FitSpec.model_validate_json(Path(spec_path).read_text(encoding="utf-8"))
    work = Path(spec_path).parent
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    rank = int(os.environ.get("RANK", 0))

    def relay_progress(step: int, max_steps: int, logs: dict) -> None:
        with open(work / "progress.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "max_steps": max_steps, "logs": logs}) + "\n")

    try:
        outcome = fit(spec, relay_progress if rank == 0 else None)
    except Exception as exc:  # noqa: BLE001
        if not _is_oom(exc):
            raise
        (work / f"oom-rank{rank}.txt").write_text(str(exc)[:2000], encoding="utf-8")
        sys.exit(OOM_EXIT_CODE)
    if rank == 0:
        write_json(work / "outcome.json", outcome.model_dump())


def _die_with_parent() -> None:
    """Runs in the launcher's child before exec: the kernel sends it SIGTERM when the task's process dies (a killed
    worker), and torchrun passes that on to the ranks, so no orphaned rank keeps writing checkpoints."""
    import ctypes
    import signal

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_distributed(spec: FitSpec, plan: LaunchPlan, work: Path, progress_hook=None) -> FitOutcome:
    """Start ``plan.processes`` ranks with torchrun and wait; relays rank 0's progress; OOM in any rank raises
    CudaOutOfMemory."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    spec_path = write_json(work / "spec.json", spec.model_dump())
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, **plan.env,
           "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={plan.processes}",
               "-m", "tasks.train", str(spec_path)]
    log.info("launching %d ranks (%s): %s", plan.processes, plan.name, " ".join(command))
    process = subprocess.Popen(command, env=env, cwd=root, preexec_fn=_die_with_parent)
    seen = 0
    try:
        while process.poll() is None:
            time.sleep(1.0)
            seen = _relay(work / "progress.jsonl", seen, progress_hook)
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait()
    _relay(work / "progress.jsonl", seen, progress_hook)
    ooms = sorted(work.glob("oom-rank*.txt"))
    if ooms:
        raise CudaOutOfMemory(f"{ooms[0].stem}: {ooms[0].read_text(encoding='utf-8')}")
    if process.returncode != 0:
        raise RuntimeError(f"distributed training ({plan.processes} x {plan.name}) failed with exit status "
                           f"{process.returncode}; the ranks' tracebacks are in the log above")
    return FitOutcome.model_validate_json((work / "outcome.json").read_text(encoding="utf-8"))


def _relay(path: Path, seen: int, progress_hook) -> int:
    if not path.exists():
        return seen
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[seen:]:
        if progress_hook and line.strip():
            item = json.loads(line)
            progress_hook(item["step"], item["max_steps"], item["logs"])
    return len(lines)


# --- the stage ----------------------------------------------------------------------------------------------------


def train(dataset_dir: str, eval_dataset_dir: str | None, model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig,
          tokenize_cfg: TokenizeConfig, out_dir: Path, progress_hook=None) -> TrainResult:
    """Fine-tune a LoRA adapter on the tokenized rows; returns where it is and how training went.

    A second training into the same ``out_dir`` (two runs of one config at once) fails at once with a message naming
    the process that holds it, instead of interleaving checkpoints; a Prefect retry of it waits with backoff.
    """
    out_dir = Path(out_dir)
    with exclusive_dir(out_dir):
        backend = choose_backend(cfg)
        plan = launch_plan(cfg, backend)
        checkpoint_dir = out_dir / "checkpoints" / inputs_key(dataset_dir, model_dir, model_cfg, cfg, plan.processes)
        micro_batch, accumulation = cfg.micro_batch_size, cfg.gradient_accumulation // plan.processes
        oom_retries: list[str] = []
        while True:
            resume = last_complete_checkpoint(checkpoint_dir)
            if resume:
                log.info("resuming training from %s", resume)
            spec = FitSpec(backend=backend, dataset_dir=dataset_dir, eval_dataset_dir=eval_dataset_dir,
                           model_dir=model_dir, model_cfg=model_cfg, cfg=cfg,
                           max_seq_length=tokenize_cfg.max_seq_length, checkpoint_dir=str(checkpoint_dir),
                           adapter_dir=str(out_dir / "adapter"), resume=str(resume) if resume else None,
                           micro_batch=micro_batch, accumulation=accumulation, trainer_args=plan.trainer_args,
                           quant_storage=plan.quant_storage)
            oom = None
            try:
                if plan.launcher == "in-process":
                    outcome = fit(spec, progress_hook)
                else:
                    outcome = run_distributed(spec, plan, out_dir / "launch", progress_hook)
            except Exception as exc:  # noqa: BLE001
                if not (isinstance(exc, CudaOutOfMemory) or _is_oom(exc)) or micro_batch // 2 < cfg.min_micro_batch_size:
                    raise
                oom = (f"CUDA out of memory at micro-batch {micro_batch} x accumulation {accumulation}"
                       f"{f' x {plan.processes} GPUs' if plan.processes > 1 else ''}; retrying with "
                       f"{micro_batch // 2} x {accumulation * 2} (same effective batch)")
            if oom is None:
                break
            # Out of the except block, so that the traceback's frames (and the tensors they hold) can be freed.
            log.warning(oom)
            oom_retries.append(oom)
            micro_batch, accumulation = micro_batch // 2, accumulation * 2
            _free_cuda()
        history_path = write_json(out_dir / "log_history.json", outcome.log_history)
        result = TrainResult(
            adapter=str(out_dir / "adapter"), backend=backend, steps=outcome.steps, epochs=outcome.epochs,
            train_loss=outcome.train_loss, first_loss=outcome.losses[0] if outcome.losses else None,
            last_loss=outcome.losses[-1] if outcome.losses else None, seconds=outcome.seconds,
            tokens_per_second=round(outcome.tokens / max(outcome.seconds, 1e-9), 1),
            steady_tokens_per_second=outcome.steady_tokens_per_second, resumed_from=str(resume) if resume else None,
            micro_batch_size=micro_batch, gradient_accumulation=accumulation, processes=plan.processes,
            launch=plan.name, oom_retries=oom_retries, log_history=str(history_path),
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


if __name__ == "__main__":  # one rank of a distributed launch (run_distributed)
    rank_main(sys.argv[1])
