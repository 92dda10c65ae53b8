"""Which checkpoint a retried training resumes from: the newest one that is complete, whole and free of pickle.

A checkpoint counts only when the trainer marked it complete (``checkpoint-complete.json``, written after every rank
saved). Before it is handed to the trainer it is checked, without loading anything that could run code:

- ``trainer_state.json`` reads as JSON and names the step of the folder's own name, within its ``max_steps``;
- the adapter (``adapter_model.safetensors``) parses and holds every tensor its header names (a truncated file is
  caught here instead of as a raw error retried three times);
- no pickle weights (``*.bin``, a pickle renamed ``.safetensors``) and no safetensors index with no shards;
- the optimizer, scheduler, loss scaler and RNG states load with ``torch.load(weights_only=True)`` and
  transformers' allowlist of numpy types (exactly as the trainer will load them), which refuses any other pickled
  object;
- a distributed (FSDP) checkpoint's ``.metadata`` files, which torch's reader unpickles, are read only in an FSDP run
  and only when their sha256 is the one the completion marker recorded when this pipeline wrote them.

The best checkpoint a resumed state names (early stopping loads it at the end) is taken from the same folder and
checked the same way (``trusted_best``), never from the path recorded in the state.

An incomplete checkpoint (a crash mid-save) is deleted; one that fails a check is renamed ``broken-checkpoint-N``
with the reason logged, and the previous complete checkpoint is used, so a rerun never stops on it.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from pathlib import Path

from r1lib.io import sha256_file

log = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint-complete.json"
TRAINER_STATE = "trainer_state.json"  # the step, the run's length and the log history a resume restores
TORCH_STATES = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state.pth", "rng_state_*.pth")


def distributed_metadata(checkpoint: Path) -> dict[str, str]:
    """{relative path: sha256} of every ``.metadata`` file (torch distributed checkpoints) in ``checkpoint``."""
    return {str(p.relative_to(checkpoint)): sha256_file(p) for p in sorted(checkpoint.rglob(".metadata"))}


def mark_complete(checkpoint: Path, step: int) -> None:
    """Record that ``checkpoint`` is whole, with the digests of the files the trainer would unpickle."""
    marker = {"step": step, "metadata_sha256": distributed_metadata(checkpoint)}
    (checkpoint / COMPLETE_MARKER).write_text(json.dumps(marker))


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (None when it is): header length, JSON header, data size."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return f"{path.name} is {size} bytes, not a safetensors file"
        length = struct.unpack("<Q", head)[0]
        if length > min(size - 8, 100 * 2**20):
            return f"{path.name} is not a safetensors file (a pickle renamed .safetensors?)"
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError):
            return f"{path.name} has no readable safetensors header"
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
    if not ends:
        return f"{path.name} holds no tensors"
    if size < 8 + length + max(ends):
        return f"{path.name} is truncated: {size} bytes, its header needs {8 + length + max(ends)}"
    return None


def checkpoint_step(checkpoint: Path) -> int | None:
    """The step in a ``checkpoint-<step>`` folder's name, as the trainer writes it; None for any other name."""
    step = checkpoint.name.removeprefix("checkpoint-")
    return int(step) if step.isascii() and step.isdigit() else None


def trainer_state_problem(checkpoint: Path) -> str | None:
    """Why the checkpoint's ``trainer_state.json`` (which the resume and the finished-run check read) does not
    describe the step its folder is named for, or None."""
    path = checkpoint / TRAINER_STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"{TRAINER_STATE} does not read as JSON ({type(exc).__name__}: {str(exc)[:160]})"
    step = checkpoint_step(checkpoint)
    done, total = (state.get("global_step"), state.get("max_steps")) if isinstance(state, dict) else (None, None)
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in (done, total)) or done != step or done > total:
        return f"{TRAINER_STATE} says global_step {done!r} of max_steps {total!r}, not step {step} of its folder"
    return None


def checkpoint_problem(checkpoint: Path, distributed: bool) -> str | None:
    """Why ``checkpoint`` must not be resumed from (module docstring), or None."""
    import torch

    if problem := trainer_state_problem(checkpoint):
        return problem
    pickles = [p.name for p in checkpoint.glob("*.bin") if p.name != "training_args.bin"]
    if pickles:
        return f"pickle weights {pickles}: this pipeline writes safetensors only"
    for index in checkpoint.glob("*.safetensors.index.json"):
        try:
            shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        except ValueError:
            return f"{index.name} is not JSON"
        if not shards or not all((checkpoint / s).is_file() for s in shards):
            return f"{index.name} names no shard, or shards that are not there"
    adapter = checkpoint / "adapter_model.safetensors"
    tensors = list(checkpoint.glob("*.safetensors"))
    if not adapter.exists() and not distributed:
        return "no adapter_model.safetensors"
    for path in tensors:
        problem = safetensors_problem(path)
        if problem:
            return problem
    metadata = distributed_metadata(checkpoint)
    if metadata:
        if not distributed:
            return f"a distributed checkpoint ({sorted(metadata)}) in a one-process run: its .metadata is pickle"
        try:
            recorded = json.loads((checkpoint / COMPLETE_MARKER).read_text()).get("metadata_sha256", {})
        except (ValueError, AttributeError):
            return f"{COMPLETE_MARKER} is not the JSON object this pipeline writes"
        if metadata != recorded:
            return "its distributed .metadata files are not the ones this pipeline wrote (their sha256 differ)"
    from transformers.trainer_pt_utils import safe_globals  # numpy's RNG state, as the trainer loads it

    for pattern in TORCH_STATES:
        for state in checkpoint.glob(pattern):
            try:
                with safe_globals():
                    torch.load(state, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - any refusal or parse failure makes the state unusable
                return f"{state.name} does not load as plain tensors ({type(exc).__name__}: {str(exc)[:160]})"
    return None


def trusted_best(best: str | None, checkpoint_dir: Path, distributed: bool = False) -> Path | None:
    """The checkpoint a resumed trainer state names as its best (``best_model_checkpoint``), taken as the folder of
    that name in ``checkpoint_dir`` and only when it is complete and passes ``checkpoint_problem``; else None, logged.
    The recorded path is never followed: weights load from it, and a distributed checkpoint's ``.metadata``
    unpickles."""
    if not best:
        return None
    candidate = Path(checkpoint_dir) / Path(best).name
    if checkpoint_step(candidate) is None or not (candidate / COMPLETE_MARKER).is_file():
        problem = f"no complete checkpoint of that name in {checkpoint_dir}"
    else:
        problem = checkpoint_problem(candidate, distributed)
    if problem:
        log.warning("not loading %s, the best checkpoint its trainer state names: %s", best, problem)
        return None
    return candidate


def last_complete_checkpoint(checkpoint_dir: Path, distributed: bool = False) -> Path | None:
    """The newest complete checkpoint that passes ``checkpoint_problem``; incomplete ones (a crash mid-save) are
    deleted, broken ones renamed ``broken-checkpoint-N`` with the reason logged."""
    if not checkpoint_dir.exists():
        return None
    complete = []
    for path in checkpoint_dir.glob("checkpoint-*"):
        if (step := checkpoint_step(path)) is None:
            log.warning("leaving %s alone: not a checkpoint-<step> folder the trainer writes", path)
        elif (path / COMPLETE_MARKER).exists():
            complete.append((step, path))
        else:
            log.warning("deleting incomplete checkpoint %s (the last run stopped while writing it)", path)
            shutil.rmtree(path, ignore_errors=True)
    for _, path in sorted(complete, reverse=True):
        problem = checkpoint_problem(path, distributed)
        if problem is None:
            return path
        aside = path.with_name(f"broken-{path.name}")
        shutil.rmtree(aside, ignore_errors=True)
        path.rename(aside)
        log.warning("not resuming from %s: %s; moved to %s, trying the previous checkpoint", path, problem, aside)
    return None
