"""Stage 5, train: QLoRA fine-tuning of a LoRA adapter on the tokenized rows.

The training methods (``train.method``: r1lib/training/methods/), backends, fit loop, launcher and out-of-memory
retry live in r1lib/training/; this stage picks a backend and a launch plan, and runs the fit (resuming from the
last complete checkpoint of the same inputs) with what the memory plan chose (r1lib/training/plan.py: gradient
checkpointing and micro-batch from the model's shape and the GPU memory, under ``train.max_gpu_memory_gib``),
through ``fit_with_oom_retry`` (r1lib/training/retry.py). It writes ``train/adapter`` and
``train/log_history.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from r1lib.config import ModelConfig, TokenizeConfig, TrackingConfig, TrainConfig
from r1lib.data.preference_tokens import PAIR_COLUMNS, UNPAIRED_COLUMNS
from r1lib.io import exclusive_dir, write_json
from r1lib.model.gpu_memory import apply_cap
from r1lib.ops.api_watch import ApiReports
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_logger, stage_options
from r1lib.stage import StageResult
from r1lib.training.backends import choose_backend
from r1lib.training.fit import FitSpec, inputs_key
from r1lib.training.launcher import launch_plan
from r1lib.training.methods import METHODS
from r1lib.training.methods.base import REFERENCE_METHODS, REPLAY_METHODS, reference_description
from r1lib.training.plan import plan_memory
from r1lib.training.report import loss_curve, loss_markdown, method_story, progress_line
from r1lib.training.retry import fit_with_oom_retry


class TrainResult(StageResult):
    adapter: InputPath
    method: str = "sft"  # train.method (r1lib/training/methods/); results written before it existed were SFT
    trained_on: str = ""  # what it trained on: "360 preference pairs", "1200 rows"
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
            "train": self.model_dump(exclude={"epochs", "log_history", "loss_curve"})  # every other field
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
                f"{self.method} on {self.trained_on or 'the tokenized rows'}, {self.backend}: {self.steps} steps, "
                f"{self.loss_text()} (mean {self.train_loss:.3f}), "
                f"{self.seconds} s ({self.tokens_per_second} tokens/s){resumed}",
            )
        ]

    def card_section(self) -> str:
        lines = [
            "## Training",
            "",
            f"{self.method.upper()} on {self.trained_on or 'the tokenized rows'} with the {self.backend} backend, "
            f"{self.steps} steps, {self.loss_text()}, "
            f"{self.seconds} s, micro batch {self.micro_batch_size} x accumulation {self.gradient_accumulation}.",
            "",
        ]
        if self.loss_curve:
            story = " and the per-step rewards, lengths and shares" if self.method == "grpo" else ""
            lines += [f"![Training and evaluation loss{story}]({Path(self.loss_curve).name})", ""]
        return "\n".join(lines)


def rows_trained(method: str, dataset_dir: str) -> str:
    """What ``method`` trains on in ``dataset_dir``, counted: "360 preference pairs", "720 labelled answers"."""
    from datasets import load_from_disk

    columns = METHODS[method].columns
    kind = {PAIR_COLUMNS: "preference pairs", UNPAIRED_COLUMNS: "labelled answers"}.get(columns, "rows")
    return f"{load_from_disk(dataset_dir).num_rows} {kind}"


def train(
    dataset_dir: str,
    eval_dataset_dir: str | None,
    model_dir: str,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    tokenize_cfg: TokenizeConfig,
    out_dir: Path,
    progress_hook=None,
    tracking_cfg: TrackingConfig | None = None,
    replay_dataset_dir: str | None = None,
) -> TrainResult:
    """Fine-tune a LoRA adapter on the tokenized rows; returns where it is and how training went. A preference method
    adds the SFT loss of the general replay rows in ``replay_dataset_dir`` (``train.replay_weight``).

    A second training into the same ``out_dir`` (two runs of one config at once) fails at once with a message naming
    the process that holds it, instead of interleaving checkpoints; a Prefect retry of it waits with backoff.
    """
    out_dir = Path(out_dir)
    with exclusive_dir(out_dir):
        backend = choose_backend(cfg)
        plan = launch_plan(cfg, backend)
        if plan.trainer_args:
            stage_logger().info("launch preset %s sets %s", plan.name, "; ".join(plan.overrides(cfg)))
        replay_dataset_dir = replay_dataset_dir if cfg.method in REPLAY_METHODS and cfg.replay_weight else None
        key = inputs_key(dataset_dir, model_dir, model_cfg, cfg, plan.processes, replay_dataset_dir)
        checkpoint_dir = out_dir / "checkpoints" / key
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
        trained_on = rows_trained(cfg.method, dataset_dir)
        stage_logger().info("train.method=%s on %s (%s)", cfg.method, trained_on, dataset_dir)
        if cfg.method in REFERENCE_METHODS:
            stage_logger().info("reference policy: %s", reference_description(cfg))
        if replay_dataset_dir:
            stage_logger().info("replay: the SFT loss of %s x train.replay_weight %g added to every step's loss",
                                rows_trained("sft", replay_dataset_dir).replace("rows", "general rows"),
                                cfg.replay_weight)  # fmt: skip
        run = fit_with_oom_retry(
            FitSpec(
                backend=backend,
                dataset_dir=dataset_dir,
                eval_dataset_dir=eval_dataset_dir,
                model_dir=model_dir,
                model_cfg=model_cfg,
                cfg=cfg.model_copy(update={"gradient_checkpointing": memory.gradient_checkpointing}),
                max_seq_length=tokenize_cfg.max_seq_length,
                checkpoint_dir=str(checkpoint_dir),
                adapter_dir=str(out_dir / "adapter"),
                resume=None,  # each attempt resumes from the last complete checkpoint
                micro_batch=memory.micro_batch,
                accumulation=memory.accumulation,
                trainer_args=plan.trainer_args,
                quant_storage=plan.quant_storage,
                report_to=tracking_cfg.report_to if tracking_cfg else "none",
                run_name=out_dir.parent.name,
                replay_dataset_dir=replay_dataset_dir,
            ),
            plan,
            out_dir / "launch",
            auto_recompute=cfg.gradient_checkpointing == "auto",
            progress_hook=progress_hook,
        )
        outcome = run.outcome
        history_path = write_json(out_dir / "log_history.json", outcome.log_history)
        curve = loss_curve(outcome.log_history, out_dir / "loss_curve.png", METHODS[cfg.method].reports)
        result = TrainResult(
            adapter=str(out_dir / "adapter"),
            method=cfg.method,
            trained_on=trained_on,
            backend=backend,
            steps=outcome.steps,
            epochs=outcome.epochs,
            train_loss=outcome.train_loss,
            first_loss=outcome.losses[0] if outcome.losses else None,
            last_loss=outcome.losses[-1] if outcome.losses else None,
            seconds=outcome.seconds,
            tokens_per_second=round(outcome.tokens / max(outcome.seconds, 1e-9), 1),
            steady_tokens_per_second=outcome.steady_tokens_per_second,
            resumed_from=run.resumed_from,
            micro_batch_size=run.micro_batch,
            gradient_accumulation=run.accumulation,
            processes=plan.processes,
            launch=plan.name,
            oom_retries=run.oom_retries,
            log_history=str(history_path),
            loss_curve=str(curve) if curve else None,
            gradient_checkpointing=run.gradient_checkpointing,
            memory_plan=memory.describe(),
            tokens=outcome.tokens,
            segments=outcome.segments,
        )
        write_json(out_dir / "result.json", result.model_dump())
        return result


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="train", task_run_name="train", **stage_options(retries=2, timeout_seconds=24 * 3600, log_prints=False))
def train_task(
    dataset_dir: InputPath,
    eval_dataset_dir: InputPath | None,
    model_dir: InputPath,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    tokenize_cfg: TokenizeConfig,
    out_dir: OutputPath,
    tracking_cfg: TrackingConfig | None = None,
    replay_dataset_dir: InputPath | None = None,
) -> TrainResult:
    """QLoRA fine-tuning into ``out_dir``; resumes from the last complete checkpoint when retried. Its reports to the
    Prefect API are best-effort (``ApiReports``): a server that stops answering does not stop the training. The
    trainer logs to ``tracking_cfg.report_to`` live (the flow opened that tracker run: r1lib/ops/tracking.py)."""
    reports = ApiReports()
    progress_id = reports(
        create_progress_artifact,
        progress=0.0,
        key="training-progress",
        description=f"training: {cfg.max_steps or '?'} optimizer steps to go",
    )
    curve: list[dict] = []
    seen: list[tuple[int, float]] = []  # (step, time) of the first report of this attempt: the rate's origin

    def report(step: int, max_steps: int, logs: dict) -> None:
        now = time.monotonic()
        seen[:] = seen or [(step, now)]
        reports(
            update_progress_artifact,
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
        Path(out_dir),
        progress_hook=report,
        tracking_cfg=tracking_cfg,
        replay_dataset_dir=replay_dataset_dir,
    )
    resumed = f" · resumed from {Path(result.resumed_from).name}" if result.resumed_from else ""
    reports(
        update_progress_artifact,
        artifact_id=progress_id,
        progress=100.0,
        description=f"done · {result.steps} optimizer steps · {result.loss_text()}{resumed}",
    )
    reports(create_markdown_artifact, key="training-loss", markdown=loss_markdown(result, curve))
    history = json.loads(Path(result.log_history).read_text(encoding="utf-8"))
    if story := method_story(history, METHODS[cfg.method].reports):  # GRPO: rewards, lengths, shares per step
        reports(create_table_artifact, key="training-story", table=story, description=f"{cfg.method}: per logging step")
    return result
