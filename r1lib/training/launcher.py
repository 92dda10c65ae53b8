"""Launching a training run: in the task's own process, or as ranks under torchrun.

A launch preset (``deployments/launch/<name>.yaml``: single, ddp, fsdp) is resolved against the config and this
machine into a ``LaunchPlan``. More than one process starts ``torchrun`` whose ranks each run ``fit``
(``python -m r1lib.training.launcher <spec.json>``); rank 0's progress is relayed to the caller, an out-of-memory
error in any rank comes back as ``CudaOutOfMemory``, and the ranks die with the process that launched them.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from r1lib.config import TrainConfig
from r1lib.errors import ConfigError
from r1lib.gpu_memory import apply_cap
from r1lib.io import write_json
from r1lib.paths import PROJECT_DIR
from r1lib.training.fit import FitOutcome, FitSpec, fit

log = logging.getLogger(__name__)
# What a launch preset's ``trainer:`` block may set: distributed-training arguments only. Anything that uploads
# (push_to_hub, hub_*), reports elsewhere (report_to) or moves outputs (output_dir) is refused.
TRAINER_ARGS_ALLOWED = frozenset(
    {
        "ddp_find_unused_parameters",
        "ddp_timeout",
        "ddp_backend",
        "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers",
        "fsdp",
        "fsdp_config",
        "optim",
        "gradient_checkpointing",
        "gradient_checkpointing_kwargs",
        "dataloader_num_workers",
        "dataloader_pin_memory",
        "tf32",
    }
)
LAUNCH_DIR = PROJECT_DIR / "deployments" / "launch"

OOM_EXIT_CODE = 75  # a rank's exit status when it ran out of GPU memory (the parent retries with a smaller batch)


class LaunchPlan(BaseModel):
    """A launch preset (deployments/launch/<name>.yaml) resolved against the config and this machine."""

    name: str
    launcher: Literal["in-process", "torchrun"]
    processes: int
    trainer_args: dict = {}
    quant_storage: str | None = None
    env: dict[str, str] = {}

    def overrides(self, cfg: TrainConfig) -> list[str]:
        """The preset's TrainingArguments that replace what the config set, in words for the log."""
        said = {
            "optim": cfg.optimizer,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "learning_rate": cfg.learning_rate,
            "max_grad_norm": cfg.max_grad_norm,
            "seed": cfg.seed,
            "logging_steps": cfg.logging_steps,
            "save_steps": cfg.save_steps,
        }
        fields = {"optim": "optimizer"}
        return [
            f"{key}={value!r} (train.{fields.get(key, key)} = {said[key]!r})" if key in said else f"{key}={value!r}"
            for key, value in self.trainer_args.items()
        ]


def launch_plan(cfg: TrainConfig, backend: str) -> LaunchPlan:
    """``train.launch`` (auto: single for one process, ddp for more) resolved for ``backend`` on this machine."""
    import torch
    import yaml

    name = cfg.launch
    if name == "auto":
        name = "single" if cfg.gpus == 1 else "ddp"
    path = Path(name) if name.endswith((".yaml", ".yml")) else LAUNCH_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in LAUNCH_DIR.glob("*.yaml")))
        raise ConfigError(f"train.launch = {name!r}: no preset {path} (known: {known})")
    preset = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    refused = sorted(set(preset.get("trainer") or {}) - TRAINER_ARGS_ALLOWED)
    if refused:
        raise ConfigError(
            f"launch preset {path}: its trainer block may not set {refused}; allowed: {sorted(TRAINER_ARGS_ALLOWED)}"
        )
    if backend not in preset.get("backends", ["unsloth", "hf"]):
        raise ConfigError(
            f"launch preset {path.name} does not support the {backend} backend "
            f"(supports {preset['backends']}); set train.backend accordingly"
        )
    visible = torch.cuda.device_count()
    wanted = cfg.gpus or preset.get("processes", 1)
    if wanted == "all":
        wanted = max(visible, 1)
    if preset.get("launcher", "in-process") == "in-process":
        if cfg.gpus > 1:
            raise ConfigError(
                f"launch preset {path.name} trains in one process; use ddp or fsdp for train.gpus = {cfg.gpus}"
            )
        wanted = 1
    if visible and wanted > visible:
        raise ConfigError(f"train.gpus = {wanted} but this machine shows {visible} GPU(s)")
    if cfg.gradient_accumulation % wanted:
        raise ConfigError(
            f"train.gradient_accumulation ({cfg.gradient_accumulation}) must be a multiple of the "
            f"{wanted} training processes, so that the effective batch stays micro_batch_size x "
            f"gradient_accumulation = {cfg.micro_batch_size * cfg.gradient_accumulation}"
        )
    # One process needs no launcher, whatever the preset: it trains in the task's own process.
    launcher = "in-process" if wanted == 1 else preset["launcher"]
    return LaunchPlan(
        name=path.stem,
        launcher=launcher,
        processes=wanted,
        trainer_args=preset.get("trainer") or {},
        quant_storage=preset.get("quant_storage"),
        env={k: str(v) for k, v in (preset.get("env") or {}).items()},
    )


class CudaOutOfMemory(RuntimeError):
    """Training ran out of GPU memory (in this process or in a rank of a distributed launch)."""


def is_oom(exc: BaseException) -> bool:
    import torch

    return (
        isinstance(exc, torch.cuda.OutOfMemoryError)
        or "CUDA out of memory" in str(exc)
        or "CUBLAS_STATUS_ALLOC_FAILED" in str(exc)
    )


def free_cuda() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def rank_main(spec_path: str) -> None:
    """Entry point of one rank of a distributed launch: ``torchrun ... -m r1lib.training.launcher <spec.json>``."""
    import torch

    spec = FitSpec.model_validate_json(Path(spec_path).read_text(encoding="utf-8"))
    work = Path(spec_path).parent
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        apply_cap(spec.cfg.max_gpu_memory_gib)
    rank = int(os.environ.get("RANK", 0))

    def relay_progress(step: int, max_steps: int, logs: dict) -> None:
        with open(work / "progress.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "max_steps": max_steps, "logs": logs}) + "\n")

    try:
        outcome = fit(spec, relay_progress if rank == 0 else None)
    except Exception as exc:  # noqa: BLE001
        if not is_oom(exc):
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
    root = PROJECT_DIR
    env = {
        **os.environ,
        **plan.env,
        "PYTHONPATH": os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={plan.processes}",
        "-m",
        "r1lib.training.launcher",
        str(spec_path),
    ]
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
        raise RuntimeError(
            f"distributed training ({plan.processes} x {plan.name}) failed with exit status "
            f"{process.returncode}; the ranks' tracebacks are in the log above"
        )
    return FitOutcome.model_validate_json((work / "outcome.json").read_text(encoding="utf-8"))


def launch(spec: FitSpec, plan: LaunchPlan, work: Path, progress_hook=None) -> FitOutcome:
    """Run ``spec`` as ``plan`` says: ``fit`` in this process, or ``plan.processes`` torchrun ranks."""
    if plan.launcher == "in-process":
        return fit(spec, progress_hook)
    return run_distributed(spec, plan, work, progress_hook)


def _relay(path: Path, seen: int, progress_hook) -> int:
    if not path.exists():
        return seen
    lines = path.read_text(encoding="utf-8").splitlines()
    for line in lines[seen:]:
        if progress_hook and line.strip():
            item = json.loads(line)
            progress_hook(item["step"], item["max_steps"], item["logs"])
    return len(lines)


if __name__ == "__main__":  # one rank of a distributed launch (run_distributed)
    rank_main(sys.argv[1])
