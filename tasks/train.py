"""Stage 5, train: QLoRA fine-tuning of a LoRA adapter on the tokenized rows.

The backends, the fit loop and the launcher live in r1lib/training/; this stage picks a backend and a launch plan,
runs the fit (resuming from the last complete checkpoint of the same inputs) with what the memory plan chose
(r1lib/training/plan.py: gradient checkpointing and micro-batch from the model's shape and the GPU memory, under
``train.max_gpu_memory_gib``), and on CUDA out-of-memory first turns on the recompute the plan had turned off, then
halves the micro-batch and doubles gradient accumulation (same effective batch), down to ``min_micro_batch_size``.
It writes ``train/adapter`` and ``train/log_history.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from r1lib.config import ModelConfig, TokenizeConfig, TrainConfig
from r1lib.io import atomic_path, disk_full, exclusive_dir, is_disk_full, write_json
from r1lib.model.gpu_memory import apply_cap
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_logger, stage_options
from r1lib.runs import stage_dir
from r1lib.stage import StageResult
from r1lib.training.backends import choose_backend
from r1lib.training.fit import FitSpec, inputs_key, last_complete_checkpoint
from r1lib.training.launcher import CudaOutOfMemory, free_cuda, is_oom, launch, launch_plan
from r1lib.training.plan import plan_memory

log = logging.getLogger(__name__)


class TrainResult(StageResult):
    adapter: InputPath
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
    loss_curve: str | None = None  # loss_curve.png, when any loss was logged
    gradient_checkpointing: bool | None = None  # as trained (the memory plan's choice, or the configured value)
    memory_plan: str = ""  # what the memory plan chose and why
    tokens: int = 0  # non-pad tokens trained on, over every process and every segment of a resumed run
    segments: int = 1  # training runs it took: more than one when it resumed from a checkpoint

    def summary(self) -> dict:
        return {
            "train": self.model_dump(
                include={
                    "backend",
                    "steps",
                    "train_loss",
                    "first_loss",
                    "last_loss",
                    "seconds",
                    "tokens",
                    "segments",
                    "tokens_per_second",
                    "steady_tokens_per_second",
                    "resumed_from",
                    "micro_batch_size",
                    "gradient_accumulation",
                    "processes",
                    "launch",
                    "oom_retries",
                    "adapter",
                    "gradient_checkpointing",
                    "memory_plan",
                }
            )
        }

    def loss_text(self) -> str:
        if self.first_loss is None or self.last_loss is None:
            return "no loss logged (train.max_steps < train.logging_steps)"
        return f"loss {self.first_loss:.3f} -> {self.last_loss:.3f}"

    def summary_lines(self) -> list[tuple[str, str]]:
        resumed = f", over {self.segments} runs (resumed from a checkpoint)" if self.segments > 1 else ""
        return [
            (
                "train",
                f"{self.backend}: {self.steps} steps, {self.loss_text()} (mean {self.train_loss:.3f}), "
                f"{self.seconds} s ({self.tokens_per_second} tokens/s){resumed}",
            )
        ]

    def card_section(self) -> str:
        lines = [
            "## Training",
            "",
            f"{self.backend} backend, {self.steps} steps, {self.loss_text()}, {self.seconds} s, "
            f"micro batch {self.micro_batch_size} x accumulation {self.gradient_accumulation}.",
            "",
        ]
        if self.loss_curve:
            lines += [f"![Training and evaluation loss]({Path(self.loss_curve).name})", ""]
        return "\n".join(lines)


def loss_curve(history: list[dict], out_png: Path) -> Path | None:
    """Training loss (and eval loss, when training evaluated) per optimizer step; None when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), marker=".", label="training loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="eval loss (held-out, during training)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    ax.set_title("Training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(out_png)


def train(
    dataset_dir: str,
    eval_dataset_dir: str | None,
    model_dir: str,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    tokenize_cfg: TokenizeConfig,
    out_dir: Path,
    progress_hook=None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on the tokenized rows; returns where it is and how training went.

    A second training into the same ``out_dir`` (two runs of one config at once) fails at once with a message naming
    the process that holds it, instead of interleaving checkpoints; a Prefect retry of it waits with backoff.
    """
    out_dir = Path(out_dir)
    with exclusive_dir(out_dir):
        backend = choose_backend(cfg)
        plan = launch_plan(cfg, backend)
        if plan.trainer_args:
            stage_logger().info("launch preset %s sets %s", plan.name, "; ".join(plan.overrides(cfg)))
        checkpoint_dir = out_dir / "checkpoints" / inputs_key(dataset_dir, model_dir, model_cfg, cfg, plan.processes)
        apply_cap(cfg.max_gpu_memory_gib)
        memory = plan_memory(
            cfg,
            model_cfg,
            model_dir,
            backend,
            tokenize_cfg.max_seq_length,
            cfg.micro_batch_size,
            cfg.gradient_accumulation // plan.processes,
            plan.name,
        )
        stage_logger().info("memory plan: %s", memory.describe())
        micro_batch, accumulation = memory.micro_batch, memory.accumulation
        checkpointing = memory.gradient_checkpointing
        oom_retries: list[str] = []
        while True:
            resume = last_complete_checkpoint(checkpoint_dir)
            if resume:
                log.info("resuming training from %s", resume)
            spec = FitSpec(
                backend=backend,
                dataset_dir=dataset_dir,
                eval_dataset_dir=eval_dataset_dir,
                model_dir=model_dir,
                model_cfg=model_cfg,
                cfg=cfg.model_copy(update={"gradient_checkpointing": checkpointing}),
                max_seq_length=tokenize_cfg.max_seq_length,
                checkpoint_dir=str(checkpoint_dir),
                adapter_dir=str(out_dir / "adapter"),
                resume=str(resume) if resume else None,
                micro_batch=micro_batch,
                accumulation=accumulation,
                trainer_args=plan.trainer_args,
                quant_storage=plan.quant_storage,
            )
            oom = None
            try:
                outcome = launch(spec, plan, out_dir / "launch", progress_hook)
            except Exception as exc:  # noqa: BLE001
                if is_disk_full(exc):
                    raise disk_full(checkpoint_dir, exc) from exc  # names the folder and the free space; no retry
                # An automatic choice of no recompute is undone first; then the micro-batch halves.
                recompute_next = not checkpointing and cfg.gradient_checkpointing == "auto"
                if not (isinstance(exc, CudaOutOfMemory) or is_oom(exc)) or (
                    not recompute_next and micro_batch // 2 < cfg.min_micro_batch_size
                ):
                    raise
                where = (
                    f"CUDA out of memory at micro-batch {micro_batch} x accumulation {accumulation}"
                    f"{f' x {plan.processes} GPUs' if plan.processes > 1 else ''}"
                )
                oom = (
                    f"{where} without recompute; retrying with gradient checkpointing on"
                    if recompute_next
                    else f"{where}; retrying with {micro_batch // 2} x {accumulation * 2} (same effective batch)"
                )
            if oom is None:
                break
            # Out of the except block, so that the traceback's frames (and the tensors they hold) can be freed.
            log.warning(oom)
            oom_retries.append(oom)
            if recompute_next:
                checkpointing = True
            else:
                micro_batch, accumulation = micro_batch // 2, accumulation * 2
            free_cuda()
        history_path = write_json(out_dir / "log_history.json", outcome.log_history)
        curve = loss_curve(outcome.log_history, out_dir / "loss_curve.png")
        result = TrainResult(
            adapter=str(out_dir / "adapter"),
            backend=backend,
            steps=outcome.steps,
            epochs=outcome.epochs,
            train_loss=outcome.train_loss,
            first_loss=outcome.losses[0] if outcome.losses else None,
            last_loss=outcome.losses[-1] if outcome.losses else None,
            seconds=outcome.seconds,
            tokens_per_second=round(outcome.tokens / max(outcome.seconds, 1e-9), 1),
            steady_tokens_per_second=outcome.steady_tokens_per_second,
            resumed_from=str(resume) if resume else None,
            micro_batch_size=micro_batch,
            gradient_accumulation=accumulation,
            processes=plan.processes,
            launch=plan.name,
            oom_retries=oom_retries,
            log_history=str(history_path),
            loss_curve=str(curve) if curve else None,
            gradient_checkpointing=checkpointing,
            memory_plan=memory.describe(),
            tokens=outcome.tokens,
            segments=outcome.segments,
        )
        write_json(out_dir / "result.json", result.model_dump())
        return result


def progress_line(step: int, max_steps: int, logs: dict, origin: tuple[int, float], now: float) -> str:
    """One line for the UI's progress artifact: step, loss, learning rate, step rate and time left. The rate counts
    from ``origin`` (this attempt's first report), so steps a resumed run skipped do not inflate it."""
    parts = [f"step {step}/{max_steps}"]
    if "loss" in logs:
        parts.append(f"loss {logs['loss']:.4f}")
    if logs.get("learning_rate") is not None:
        parts.append(f"lr {logs['learning_rate']:.2e}")
    steps, seconds = step - origin[0], now - origin[1]
    if steps > 0 and seconds > 0:
        rate = steps / seconds
        left = (max_steps - step) / rate
        parts += [f"{rate:.3g} steps/s", f"ETA {left:.0f} s" if left < 120 else f"ETA {left / 60:.1f} min"]
    return " · ".join(parts)


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="train", task_run_name="train", **stage_options(retries=2, timeout_seconds=24 * 3600, log_prints=False))
def train_task(
    dataset_dir: InputPath,
    eval_dataset_dir: InputPath | None,
    model_dir: InputPath,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    tokenize_cfg: TokenizeConfig,
    run_dir: OutputPath,
) -> TrainResult:
    """QLoRA fine-tuning; resumes from the last complete checkpoint when retried."""
    progress_id = create_progress_artifact(
        progress=0.0, key="training-progress", description=f"training: {cfg.max_steps or '?'} optimizer steps to go"
    )
    curve: list[dict] = []
    seen: list[tuple[int, float]] = []  # (step, time) of the first report of this attempt: the rate's origin

    def report(step: int, max_steps: int, logs: dict) -> None:
        now = time.monotonic()
        seen[:] = seen or [(step, now)]
        update_progress_artifact(
            artifact_id=progress_id,
            progress=100.0 * step / max_steps,
            description=progress_line(step, max_steps, logs, seen[0], now),
        )
        if "loss" in logs:
            curve.append({"step": step, "loss": round(logs["loss"], 4), "lr": logs.get("learning_rate")})

    result = train(
        dataset_dir,
        eval_dataset_dir,
        model_dir,
        model_cfg,
        cfg,
        tokenize_cfg,
        stage_dir(run_dir, "train"),
        progress_hook=report,
    )
    resumed = f" · resumed from {Path(result.resumed_from).name}" if result.resumed_from else ""
    update_progress_artifact(
        artifact_id=progress_id,
        progress=100.0,
        description=f"done · {result.steps} optimizer steps · {result.loss_text()}{resumed}",
    )
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
