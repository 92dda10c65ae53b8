"""One training run, in the task's own process or in each rank of a distributed launch.

``fit`` builds the model and the method's trainer (r1lib/training/backends.py, methods/), trains, resuming from
``spec.resume`` (weights, optimizer, scheduler, RNG and data position), and publishes the adapter (rank 0 writes
it). Checkpoints land every ``save_steps`` in ``checkpoints/<inputs key>/`` and count as complete only after every
rank has written its part; a checkpoint saved at the last step is published as it is, without training again.
``tokens`` counts the non-pad tokens the model actually trained on, over all ranks.

A resumed run reports the whole run, not its last segment: each checkpoint carries the training seconds and tokens
so far (``run_totals.json``), and the loss is logged at every checkpoint and at the last step, so the log history a
checkpoint restores covers every step and the run's mean loss is taken over all of them. Work a killed segment did
after its last checkpoint is done again and counted once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

from pydantic import BaseModel

from r1lib.compat import dataset_fingerprint, pass_over_unusable_scaler_state
from r1lib.config import ModelConfig, TrainConfig
from r1lib.errors import PermanentError
from r1lib.io import atomic_dir
from r1lib.training.backends import build_trainer
from r1lib.training.checkpoints import mark_complete, trusted_best
from r1lib.training.methods import TrainerSpec

log = logging.getLogger(__name__)
RUN_TOTALS = "run_totals.json"  # in each checkpoint: training seconds and tokens up to it, over every segment
RUN_TOTAL_KEYS = ("seconds", "tokens", "segments")

ADAPTER_WEIGHTS = "adapter_model.safetensors"  # what peft writes for a LoRA adapter (checkpoints too)
FSDP_SHARDED_MODEL = "pytorch_model_fsdp_0"  # accelerate's torch.distributed.checkpoint folder of a sharded model


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
    report_to: str = "none"  # tracking.report_to
    run_name: str | None = None
    replay_dataset_dir: str | None = None  # a preference method's general replay rows (train.replay_weight)


class FitOutcome(BaseModel):
    steps: int
    epochs: float
    train_loss: float  # mean loss over every optimizer step of the run (all segments)
    losses: list[float]
    seconds: float  # training time of the whole run, over every segment
    tokens: int  # non-pad tokens trained on, summed over all processes and segments
    steady_tokens_per_second: float | None  # after the first optimizer steps (compilation, warm-up)
    log_history: list[dict]
    segments: int = 1  # training runs it took (a resumed run: more than one)


class RunTotals:
    """Training seconds and tokens of the whole run: what the checkpoint resumed from says of earlier segments, plus
    this segment's (its TokenCounter and clock, set once training starts)."""

    def __init__(self, resume: str | None):
        saved = read_run_totals(Path(resume)) if resume else {}
        self.seconds = float(saved.get("seconds", 0.0))
        self.tokens = int(saved.get("tokens", 0))
        self.segments = int(saved.get("segments", 0)) + 1
        self.counter: TokenCounter | None = None
        self.started: float | None = None

    def now(self) -> dict:
        """The totals up to this moment; every rank calls it (the token count is summed over ranks)."""
        segment = time.monotonic() - self.started if self.started is not None else 0.0
        tokens = int(_sum_over_ranks(self.counter.tokens)) if self.counter is not None else 0
        return {"seconds": round(self.seconds + segment, 3), "tokens": self.tokens + tokens, "segments": self.segments}


def read_run_totals(checkpoint: Path) -> dict:
    """A checkpoint's run totals; a checkpoint written without them, or with a file that does not hold them as
    numbers (logged, naming it: only the accounting is lost, not the training), counts as no time and no tokens."""
    path = checkpoint / RUN_TOTALS
    if not path.exists():
        return {}
    try:
        totals = json.loads(path.read_text(encoding="utf-8"))
        values = [totals.get(k, 0) for k in RUN_TOTAL_KEYS]
        if not all(type(v) in (int, float) and math.isfinite(v) and v >= 0 for v in values):
            raise ValueError(f"not non-negative numbers: { {k: totals.get(k) for k in RUN_TOTAL_KEYS} }")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s is unreadable (%s): the run's time and tokens before %s are not counted", path, exc, checkpoint)
        return {}
    return totals


def run_mean_loss(history: list[dict]) -> float:
    """The mean training loss over every optimizer step the log history covers: each logged loss is the mean over
    the steps since the previous log, so each is weighted by them."""
    logged = [h for h in history if "loss" in h and "step" in h]
    spans = [h["step"] - before for h, before in zip(logged, [0] + [h["step"] for h in logged])]
    return sum(h["loss"] * n for h, n in zip(logged, spans)) / max(sum(spans), 1)


def inputs_key(
    dataset_dir: str,
    model_dir: str,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    processes: int = 1,
    replay_dataset_dir: str | None = None,
) -> str:
    """Checkpoints are reused only by a run with the same data (and replay rows), model, training settings and number
    of processes (each rank's data order and RNG state are in the checkpoint)."""
    from datasets import load_from_disk

    digest = hashlib.sha256()
    digest.update(dataset_fingerprint(load_from_disk(dataset_dir)).encode())
    if replay_dataset_dir:
        digest.update(b"replay:" + dataset_fingerprint(load_from_disk(replay_dataset_dir)).encode())
    digest.update(model_dir.encode())
    digest.update(model_cfg.model_dump_json().encode())
    # The OOM retry changes micro-batch/accumulation; the effective batch (and so the run) stays the same.
    digest.update(cfg.model_dump_json(exclude={"micro_batch_size", "gradient_accumulation", "gpus", "launch"}).encode())
    digest.update(str(cfg.micro_batch_size * cfg.gradient_accumulation).encode())
    if processes > 1:
        digest.update(f"processes={processes}".encode())
    return digest.hexdigest()[:12]


def _callbacks(progress_hook=None, totals: RunTotals | None = None):
    from transformers import TrainerCallback

    class LogAtCheckpoints(TrainerCallback):
        """Log the loss at every checkpoint and at the last step, so the log history covers every step."""

        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save or control.should_training_stop or state.global_step >= state.max_steps:
                control.should_log = True

    class MarkComplete(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            run = totals.now() if totals is not None else None  # every rank: the token count is summed over ranks
            _barrier()  # every rank has written its part (its RNG state) before the checkpoint counts as complete
            if state.is_world_process_zero:
                path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if run is not None:
                    (path / RUN_TOTALS).write_text(json.dumps(run))
                mark_complete(path, state.global_step)

    class TrustedBest(TrainerCallback):
        """The best checkpoint a resumed state names, which the trainer loads at the end, only as ``trusted_best``
        allows."""

        def on_train_begin(self, args, state, control, **kwargs):
            if state.best_model_checkpoint:
                best = trusted_best(state.best_model_checkpoint, Path(args.output_dir), bool(args.fsdp))
                state.best_model_checkpoint = str(best) if best else None

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and state.max_steps:
                progress_hook(state.global_step, state.max_steps, logs or {})

    return [LogAtCheckpoints(), MarkComplete(), TrustedBest()] + ([Progress()] if progress_hook else [])


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


def _steady_timer(counter: TokenCounter, skip_steps: int):
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
        11, lambda obj: None, lambda obj, location: obj if location.startswith("cpu:") else None
    )


def fit(spec: FitSpec, progress_hook=None, extra_callbacks=()) -> FitOutcome:
    """Train once: build the model and trainer, train (resuming from ``spec.resume``), save the adapter. Runs in the
    task's own process or in every rank of a distributed launch; only rank 0 writes the adapter. ``extra_callbacks``:
    TrainerCallbacks of a caller that measures (r1lib/rehearsal/grpo.py)."""
    if spec.backend == "unsloth":
        import unsloth  # noqa: F401  (before transformers / trl / peft are imported below)
    from datasets import load_from_disk
    from transformers import EarlyStoppingCallback

    cfg = spec.cfg
    _accept_indexed_cpu_locations()
    train_rows = load_from_disk(spec.dataset_dir)
    eval_rows = load_from_disk(spec.eval_dataset_dir) if spec.eval_dataset_dir and cfg.eval_steps else None
    replay_rows = load_from_disk(spec.replay_dataset_dir) if spec.replay_dataset_dir and cfg.replay_weight else None
    totals = RunTotals(spec.resume)
    callbacks = _callbacks(progress_hook, totals) + list(extra_callbacks)
    if eval_rows is not None and cfg.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    trainer, tokenizer = build_trainer(
        TrainerSpec(
            backend=spec.backend,
            train_rows=train_rows,
            eval_rows=eval_rows,
            replay_rows=replay_rows,
            model_dir=spec.model_dir,
            model_cfg=spec.model_cfg,
            cfg=cfg,
            max_seq_length=spec.max_seq_length,
            output_dir=Path(spec.checkpoint_dir),
            micro_batch=spec.micro_batch,
            accumulation=spec.accumulation,
            callbacks=callbacks,
            trainer_args=spec.trainer_args,
            quant_storage=spec.quant_storage,
            report_to=spec.report_to,
            run_name=spec.run_name,
        )
    )
    if spec.resume and (finished := _finished_state(Path(spec.resume))):
        return _publish_finished(trainer, tokenizer, spec, finished, progress_hook)
    counter = TokenCounter(trainer.model)
    timer = _steady_timer(counter, skip_steps=3)
    trainer.add_callback(timer)
    totals.counter, totals.started = counter, time.monotonic()
    if pass_over_unusable_scaler_state(trainer, spec.resume):
        log.warning(
            "%s/scaler.pt: an fp16 loss scale, which this run (no fp16) has no use for; passed over", spec.resume
        )
    output = trainer.train(resume_from_checkpoint=spec.resume)
    run = totals.now()
    counter.remove()
    steady = timer.rate()
    steady = _sum_over_ranks(steady) if steady is not None else None
    publish_adapter(trainer, tokenizer, Path(spec.adapter_dir), trainer.is_world_process_zero())
    history = trainer.state.log_history
    return FitOutcome(
        steps=trainer.state.global_step,
        epochs=round(output.metrics.get("epoch", 0.0), 3),
        train_loss=run_mean_loss(history) if any("loss" in h for h in history) else output.training_loss,
        losses=[h["loss"] for h in history if "loss" in h],
        seconds=round(run["seconds"], 1),
        tokens=run["tokens"],
        steady_tokens_per_second=round(steady, 1) if steady else None,
        log_history=history,
        segments=run["segments"],
    )


def _finished_state(checkpoint: Path) -> dict | None:
    """The checkpoint's trainer state when it was saved at the run's last step (the task died after the final save,
    before it returned), else None."""
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    # The adapter as peft's file, or inside an FSDP sharded model state (the fsdp preset keeps no adapter file).
    has_weights = (checkpoint / ADAPTER_WEIGHTS).exists() or (checkpoint / FSDP_SHARDED_MODEL).is_dir()
    if state["global_step"] >= state["max_steps"] and has_weights:
        return state
    return None


def checkpoint_adapter_weights(checkpoint: Path, adapter_name: str = "default") -> dict:
    """A checkpoint's LoRA weights, keyed as peft's adapter file keys them: from that file, or else the LoRA entries
    of the FSDP sharded model state, read whole by this process alone with torch.distributed.checkpoint (every
    rank's shard files, no collective: the caller may be rank 0 only)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from peft.utils import load_peft_weights

    if (checkpoint / ADAPTER_WEIGHTS).exists():
        return load_peft_weights(str(checkpoint), device="cpu")
    reader = dcp.FileSystemReader(str(checkpoint / FSDP_SHARDED_MODEL))
    wanted = {
        key.removeprefix("model."): torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for key, meta in reader.read_metadata().state_dict_metadata.items()
        if key.startswith("model.") and ".lora_" in key and hasattr(meta, "size")
    }
    if not wanted:
        raise PermanentError(f"{checkpoint / FSDP_SHARDED_MODEL} holds no LoRA weights")
    state = {"model": wanted}
    dcp.load(state, storage_reader=reader, no_dist=True)
    return {key.replace(f".{adapter_name}.", "."): value for key, value in state["model"].items()}


def _publish_finished(trainer, tokenizer, spec: FitSpec, state: dict, progress_hook=None) -> FitOutcome:
    """Publish a finished checkpoint instead of resuming from it: transformers' resume runs the rest of the current
    epoch's loop before it checks for the end, so it would train one step past max_steps."""
    from peft import set_peft_model_state_dict

    checkpoint = Path(spec.resume)
    best = trusted_best(state.get("best_model_checkpoint"), checkpoint.parent, bool(spec.trainer_args.get("fsdp")))
    holds_weights = best and ((best / ADAPTER_WEIGHTS).exists() or (best / FSDP_SHARDED_MODEL).is_dir())
    if trainer.args.load_best_model_at_end and holds_weights:
        checkpoint = best  # what a run that had not died would have published
    log.info(
        "%s already reached step %d of %d: publishing %s without training",
        spec.resume,
        state["global_step"],
        state["max_steps"],
        checkpoint,
    )
    if trainer.is_world_process_zero():  # only rank 0 writes the adapter (FSDP's other ranks may hold meta weights)
        loaded = set_peft_model_state_dict(trainer.model, checkpoint_adapter_weights(checkpoint))
        if loaded.unexpected_keys:
            raise RuntimeError(f"{checkpoint}: adapter weights that fit no LoRA layer: {loaded.unexpected_keys[:5]}")
    publish_adapter(trainer, tokenizer, Path(spec.adapter_dir), trainer.is_world_process_zero())
    history = state["log_history"]
    logged = [h for h in history if "loss" in h]
    if progress_hook:
        for item in logged:
            progress_hook(item["step"], state["max_steps"], item)
    run = read_run_totals(Path(spec.resume))  # the run's totals when its last checkpoint was saved
    return FitOutcome(
        steps=state["global_step"],
        epochs=round(state["epoch"], 3),
        train_loss=run_mean_loss(history),
        losses=[h["loss"] for h in logged],
        seconds=round(float(run.get("seconds", 0.0)), 1),
        tokens=int(run.get("tokens", 0)),
        steady_tokens_per_second=None,
        log_history=history,
        segments=int(run.get("segments", 0)) + 1,
    )


def publish_adapter(trainer, tokenizer, adapter_dir: Path, is_rank_zero: bool) -> None:
    """Every rank takes part in saving (FSDP gathers the sharded LoRA weights); rank 0 writes, into a staging
    directory that is renamed onto ``adapter_dir`` only when complete."""
    staging = adapter_dir.with_name(f".{adapter_dir.name}.staging")
    if is_rank_zero and staging.is_symlink():
        staging.unlink()  # a link left in its place: removed, never followed (rmtree refuses it, naming nothing)
    elif is_rank_zero and staging.exists():
        shutil.rmtree(staging)
    _barrier()
    if getattr(trainer, "is_fsdp_enabled", False):
        # With the preset's SHARDED_STATE_DICT (right for checkpoints) save_model writes no adapter weights at all;
        # gather the full LoRA state on rank 0 for the adapter instead.
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(str(staging))
    if is_rank_zero:
        if not any(staging.glob("adapter_model.*")):
            raise PermanentError(
                f"saving the adapter wrote no adapter weights into {staging} "
                f"(found: {sorted(p.name for p in staging.iterdir())})"
            )
        tokenizer.save_pretrained(staging)
        with atomic_dir(adapter_dir) as tmp:
            tmp.rmdir()
            os.replace(staging, tmp)
    _barrier()
