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
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from r1lib.config import TrainConfig
from r1lib.errors import ConfigError
from r1lib.io import write_json
from r1lib.model.gpu_memory import apply_cap
from r1lib.paths import PROJECT_DIR, open_confined
from r1lib.process import die_with_parent
from r1lib.training.fit import FitOutcome, FitSpec, fit

log = logging.getLogger(__name__)
LAUNCH_DIR = PROJECT_DIR / "deployments" / "launch"
MAX_PRESET_BYTES = 64 * 2**10

_Word = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/ -]{0,256}$")]  # an option's value: no control character
_Scalar = bool | int | float | _Word


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TrainerOverrides(_Strict):
    """What a launch preset's ``trainer:`` block may set: distributed-training arguments only, with plain values.
    Anything that uploads (push_to_hub, hub_*), reports elsewhere (report_to), moves outputs (output_dir) or names
    a file to read (a string fsdp_config is a path) is refused."""

    ddp_find_unused_parameters: bool | None = None
    ddp_timeout: int | None = Field(None, ge=1, le=7 * 24 * 3600)
    ddp_backend: Literal["nccl", "gloo", "mpi", "ccl", "hccl", "cncl", "mccl"] | None = None
    ddp_bucket_cap_mb: int | None = Field(None, ge=1, le=65536)
    ddp_broadcast_buffers: bool | None = None
    fsdp: Annotated[str, Field(pattern=r"^[a-z_ ]{0,128}$")] | None = None
    fsdp_config: dict[Annotated[str, Field(pattern=r"^[a-z_]{1,64}$")], _Scalar | list[_Word]] | None = None
    optim: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,64}$")] | None = None
    gradient_checkpointing: bool | None = None
    gradient_checkpointing_kwargs: dict[Annotated[str, Field(pattern=r"^[a-z_]{1,64}$")], _Scalar] | None = None
    dataloader_num_workers: int | None = Field(None, ge=0, le=64)
    dataloader_pin_memory: bool | None = None
    tf32: bool | None = None


TRAINER_ARGS_ALLOWED = frozenset(TrainerOverrides.model_fields)
# What a preset's ``env:`` may set for the ranks: switches of accelerate, torch and NCCL that load no code (no
# LD_PRELOAD, PYTHON*, NCCL_*_PLUGIN) and send nothing anywhere (no HF_ENDPOINT, no proxies).
ENV_ALLOWED = frozenset(
    {
        "ACCELERATE_USE_FSDP",
        "FSDP_CPU_RAM_EFFICIENT_LOADING",
        "FSDP_SYNC_MODULE_STATES",
        "FSDP_USE_ORIG_PARAMS",
        "NCCL_DEBUG",
        "NCCL_P2P_DISABLE",
        "NCCL_IB_DISABLE",
        "NCCL_SHM_DISABLE",
        "NCCL_NVLS_ENABLE",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        "TORCH_NCCL_BLOCKING_WAIT",
        "TORCH_DISTRIBUTED_DEBUG",
        "OMP_NUM_THREADS",
        "CUDA_DEVICE_MAX_CONNECTIONS",
        "PYTORCH_CUDA_ALLOC_CONF",
    }
)


class LaunchPreset(_Strict):
    """A launch preset file (deployments/launch/<name>.yaml, or a .yaml under data.allowed_roots), strictly."""

    description: Annotated[str, Field(max_length=1000)] = ""
    launcher: Literal["in-process", "torchrun"] = "in-process"
    processes: Annotated[int, Field(ge=1, le=1024)] | Literal["all"] = 1
    backends: list[Literal["unsloth", "hf"]] = ["unsloth", "hf"]
    quant_storage: Literal["bfloat16", "float16", "float32", "uint8"] | None = None
    trainer: TrainerOverrides = TrainerOverrides()
    env: dict[str, _Word] = {}


def preset_path(cfg: TrainConfig) -> Path:
    """The file ``train.launch`` names (auto: single for one process, ddp for more)."""
    name = cfg.launch
    if name == "auto":
        name = "single" if cfg.gpus == 1 else "ddp"
    return Path(name) if name.endswith((".yaml", ".yml")) else LAUNCH_DIR / f"{name}.yaml"


def _no_alias_loader():
    import yaml

    class NoAliasLoader(yaml.SafeLoader):
        """yaml's safe loader without aliases: ``*name`` repeats a node by reference, so a few hundred bytes of
        nested aliases stand for billions of values, which turning them into text (or an error message) spells out.
        A preset is a few plain lines and needs none."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    "aliases (*name) are not allowed in a launch preset: write the value out",
                    event.start_mark,
                )
            return super().compose_node(parent, index)

    return NoAliasLoader


def load_launch_preset(cfg: TrainConfig) -> tuple[Path, LaunchPreset]:
    """The launch preset ``train.launch`` names, read and checked strictly (a regular file of at most 64 KiB; the
    trainer block and the environment within their allow-lists); else ConfigError naming the file and the field.
    The flows call it before any stage works (r1lib/preflight.py), and the train stage reads the file
    again through it, so a file changed in between is held to the same rules."""
    import yaml

    path = preset_path(cfg)
    known = ", ".join(sorted(p.stem for p in LAUNCH_DIR.glob("*.yaml")))
    try:
        with open_confined(path, None, "train.launch") as handle:
            raw = handle.read(MAX_PRESET_BYTES + 1)
    except OSError:
        raise ConfigError(f"train.launch = {cfg.launch!r}: no preset {path} (known: {known})") from None
    if len(raw) > MAX_PRESET_BYTES:
        raise ConfigError(f"launch preset {path}: over {MAX_PRESET_BYTES} bytes; a preset is a few lines")
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_no_alias_loader()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"launch preset {path}: not readable YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"launch preset {path}: a mapping of settings is expected")
    trainer = data.get("trainer") or {}
    refused = sorted(set(trainer) - TRAINER_ARGS_ALLOWED) if isinstance(trainer, dict) else []
    if refused:
        raise ConfigError(
            f"launch preset {path}: its trainer block may not set {refused}; allowed: {sorted(TRAINER_ARGS_ALLOWED)}"
        )
    env = data.get("env") or {}
    refused = sorted(set(map(str, env)) - ENV_ALLOWED) if isinstance(env, dict) else []
    if refused:
        raise ConfigError(
            f"launch preset {path}: its env block may not set {refused} (variables that load code or send data "
            f"elsewhere); allowed: {sorted(ENV_ALLOWED)}"
        )
    try:
        return path, LaunchPreset.model_validate({**data, "env": {str(k): str(v) for k, v in env.items()}})
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"launch preset {path}: {fields}") from None


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

    path, preset = load_launch_preset(cfg)
    if backend not in preset.backends:
        raise ConfigError(
            f"launch preset {path.name} does not support the {backend} backend "
            f"(supports {preset.backends}); set train.backend accordingly"
        )
    visible = torch.cuda.device_count()
    wanted = cfg.gpus or preset.processes
    if wanted == "all":
        wanted = max(visible, 1)
    if not visible and wanted > (os.cpu_count() or 1):
        raise ConfigError(
            f"train.gpus = {wanted} processes, but this machine has no GPU and {os.cpu_count()} CPU core(s)"
        )
    if preset.launcher == "in-process":
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
    launcher = "in-process" if wanted == 1 else preset.launcher
    return LaunchPlan(
        name=path.stem,
        launcher=launcher,
        processes=wanted,
        trainer_args=preset.trainer.model_dump(exclude_none=True),
        quant_storage=preset.quant_storage,
        env=preset.env,
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
    # The kernel sends torchrun SIGTERM when the task's process dies (a killed worker), and torchrun passes it on to
    # the ranks, so no orphaned rank keeps writing checkpoints.
    process = subprocess.Popen(command, env=env, cwd=root, preexec_fn=die_with_parent(signal.SIGTERM))
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
