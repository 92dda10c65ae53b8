"""A training run that survives CUDA out-of-memory: each attempt resumes from the last complete checkpoint, and on
OOM the next attempt first turns on the recompute an automatic choice had turned off, then halves the micro-batch
(to the largest divisor of the per-process batch at most half of it) and raises gradient accumulation to keep the
same effective batch, down to ``train.min_micro_batch_size`` (and the method's least: two rows for KTO).

A full disk is not retried: it is raised naming the checkpoint folder and the free space. Any other error is
raised as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import BaseModel

from r1lib.io import disk_full, is_disk_full
from r1lib.policy import stage_logger
from r1lib.training.checkpoints import last_complete_checkpoint
from r1lib.training.fit import FitOutcome, FitSpec
from r1lib.training.launcher import CudaOutOfMemory, LaunchPlan, free_cuda, is_oom, launch

log = logging.getLogger(__name__)


class RetriedFit(BaseModel):
    """The run's outcome and the settings of the attempt that finished it."""

    outcome: FitOutcome
    resumed_from: str | None  # the checkpoint the finishing attempt resumed from
    micro_batch: int
    accumulation: int  # per process
    gradient_checkpointing: bool
    oom_retries: list[str]  # one line per out-of-memory retry: what ran out and what was tried next


def halved_micro_batch(micro_batch: int, accumulation: int) -> int:
    """The largest micro-batch of at most half ``micro_batch`` that divides the per-process batch (``micro_batch``
    x ``accumulation``), so that the effective batch, and a GRPO step's whole groups, stay as they were; 0 at 1."""
    per_process = micro_batch * accumulation
    return next((size for size in range(micro_batch // 2, 0, -1) if per_process % size == 0), 0)


def fit_with_oom_retry(
    spec: FitSpec, plan: LaunchPlan, work: Path, *, auto_recompute: bool, progress_hook=None
) -> RetriedFit:
    """Launch ``spec`` (its micro-batch, accumulation and ``cfg.gradient_checkpointing`` as the memory plan chose:
    a bool) until it finishes or an OOM cannot be answered. ``auto_recompute``: the recompute setting was the
    plan's choice (``train.gradient_checkpointing = auto``), so an OOM may turn it on."""
    checkpoint_dir = Path(spec.checkpoint_dir)
    micro_batch, accumulation = spec.micro_batch, spec.accumulation
    checkpointing = bool(spec.cfg.gradient_checkpointing)
    oom_retries: list[str] = []
    while True:
        resume = last_complete_checkpoint(checkpoint_dir, distributed=bool(plan.trainer_args.get("fsdp")))
        if resume:
            log.info("resuming training from %s", resume)
        attempt = spec.model_copy(
            update={
                "cfg": spec.cfg.model_copy(update={"gradient_checkpointing": checkpointing}),
                "resume": str(resume) if resume else None,
                "micro_batch": micro_batch,
                "accumulation": accumulation,
            }
        )
        oom = None
        try:
            outcome = launch(attempt, plan, work, progress_hook)
        except Exception as exc:  # noqa: BLE001
            if is_disk_full(exc):
                raise disk_full(checkpoint_dir, exc) from exc  # names the folder and the free space; no retry
            # An automatic choice of no recompute is undone first; then the micro-batch halves.
            recompute_next = not checkpointing and auto_recompute
            per_process, smaller = micro_batch * accumulation, halved_micro_batch(micro_batch, accumulation)
            if not (isinstance(exc, CudaOutOfMemory) or is_oom(exc)) or (
                not recompute_next and smaller < max(spec.cfg.min_micro_batch_size, spec.cfg.smallest_micro_batch)
            ):
                raise
            where = (
                f"CUDA out of memory at micro-batch {micro_batch} x accumulation {accumulation}"
                f"{f' x {plan.processes} GPUs' if plan.processes > 1 else ''}"
            )
            oom = (
                f"{where} without recompute; retrying with gradient checkpointing on"
                if recompute_next
                else f"{where}; retrying with {smaller} x {per_process // smaller} (same effective batch)"
            )
        if oom is None:
            return RetriedFit(
                outcome=outcome,
                resumed_from=attempt.resume,
                micro_batch=micro_batch,
                accumulation=accumulation,
                gradient_checkpointing=checkpointing,
                oom_retries=oom_retries,
            )
        # Out of the except block, so that the traceback's frames (and the tensors they hold) can be freed.
        stage_logger().warning(oom)
        oom_retries.append(oom)
        if recompute_next:
            checkpointing = True
        else:
            micro_batch, accumulation = smaller, per_process // smaller
        free_cuda()
