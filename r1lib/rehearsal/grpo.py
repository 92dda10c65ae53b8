"""A GRPO stage, measured: ``train.method=grpo`` through the train stage's fit loop (r1lib/training/fit.py) for a few
optimizer steps, with each step's wall time, the tokens it generated and the peak GPU memory.

The rehearsal runs it after the flow, from the flow's SFT adapter, on a random-weight model: such a model never ends
a sentence, so every completion runs to ``max_completion_length`` (the worst case of a real run's step).
bench/grpo_throughput.py runs it as the pipeline side of its comparison with TRL's own GRPOTrainer.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from r1lib.config import ModelConfig, TrainConfig
from r1lib.model.gpu_memory import GIB


def step_recorder():
    """A TrainerCallback noting each optimizer step's wall time and its logged metrics (``logging_steps=1``)."""
    from transformers import TrainerCallback

    class StepRecorder(TrainerCallback):
        def __init__(self):
            self.begun: float | None = None
            self.seconds: list[float] = []
            self.logs: list[dict] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begun = time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            if self.begun is not None:
                self.seconds.append(time.monotonic() - self.begun)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                self.logs.append(dict(logs))

    return StepRecorder()


def grpo_settings(num_generations: int, max_completion_length: int) -> dict:
    """train.grpo for a measurement: every reward on (their cost is part of a step), the buffer a quarter of the
    limit, and any answer accepted as checkable (the rehearsal's rows have long synthetic reasoning)."""
    return {
        "num_generations": num_generations,
        "max_completion_length": max_completion_length,
        "overlong_buffer": max(1, max_completion_length // 4),
        "max_answer_chars": 100_000,
    }


def measure_grpo(
    model_dir: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    dataset_dir: str,
    work: Path,
    steps: int,
    max_seq_length: int,
    backend: str,
) -> dict:
    """Train ``steps`` GRPO optimizer steps of ``train_cfg`` (method grpo; its batch, its train.grpo) and measure
    them: seconds per step (the median after the first, which pays for warm-up), generated tokens per second, the
    completions' mean length and truncated share, and the peak GPU memory of this process (None on a CPU)."""
    import torch

    from r1lib.training.fit import FitSpec, fit

    cfg = train_cfg.model_copy(update={"method": "grpo", "max_steps": steps, "logging_steps": 1, "save_steps": 10**6})
    recorder = step_recorder()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    outcome = fit(
        FitSpec(
            backend=backend,
            dataset_dir=dataset_dir,
            eval_dataset_dir=None,
            model_dir=model_dir,
            model_cfg=model_cfg,
            cfg=cfg,
            max_seq_length=max_seq_length,
            checkpoint_dir=str(work / "checkpoints"),
            adapter_dir=str(work / "adapter"),
            resume=None,
            micro_batch=cfg.micro_batch_size,
            accumulation=cfg.gradient_accumulation,
        ),
        extra_callbacks=[recorder],
    )
    wall = time.monotonic() - started
    completions = cfg.micro_batch_size * cfg.gradient_accumulation
    generated = [log["completions/mean_length"] * completions for log in recorder.logs]
    steady = recorder.seconds[1:] or recorder.seconds
    return {
        "backend": backend,
        "steps": outcome.steps,
        "completions_per_step": completions,
        "num_generations": cfg.grpo.num_generations,
        "max_completion_length": cfg.grpo.max_completion_length,
        "seconds": round(wall, 2),
        "step_seconds": [round(s, 3) for s in recorder.seconds],
        "seconds_per_step": round(statistics.median(steady), 3) if steady else None,
        "generated_tokens": int(sum(generated)),
        "generated_tokens_per_s": round(sum(generated[1:] or generated) / max(sum(steady), 1e-9), 1),
        "mean_completion_length": round(statistics.mean(g / completions for g in generated), 1) if generated else None,
        "clipped_ratio": round(statistics.mean(log["completions/clipped_ratio"] for log in recorder.logs), 3)
        if recorder.logs
        else None,
        "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
    }
