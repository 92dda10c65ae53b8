"""The export branch of the finetune flow: merge and full-precision GGUF -> every quantized type, as Prefect futures.

It needs no GPU and nothing of the evaluation, so the flow submits it as soon as training has written the adapter
and it runs beside evaluation and the fairness check (flows/finetune.py). The merge streams shard by shard in host
memory; where it is a plain LoRA on a 16-bit base the converter does not wait for it: it reads the base and adds the
adapter to each weight itself (r1lib/export/merge.py: ``conversion_view``). Each quantized type is its own child
process, all at once, each with every core (``quantize_threads``). When ``export.keep_full_precision`` is off and
quantized types are requested, the full-precision GGUF is only the quantizer's input: it goes to RAM where it fits
(``export.scratch_dir``: r1lib/export/scratch.py) and is deleted once every quantized file is written (a retry
converts it again).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from prefect.futures import PrefectFuture, wait

from r1lib.config import PipelineConfig
from r1lib.export.gguf import GGUFFile
from r1lib.export.merge import stream_merge_plan
from r1lib.export.scratch import discard, remove_run_scratch
from r1lib.ops.timeline import timed
from r1lib.stages import settings
from tasks.export import convert_task, merge_task, quantize_task

log = logging.getLogger(__name__)

# Submitted stages run in worker threads, where Prefect cannot interrupt a stage on its timeout (it only warns, at
# WARNING, on every run): they carry none; ``IN_THREAD`` says so once for every submitted stage of the flow. It is 0,
# not None: ``with_options(timeout_seconds=None)`` keeps the task's own, and Task makes a 0 timeout None.
IN_THREAD = {"timeout_seconds": 0, **timed()}
merge = merge_task.with_options(task_run_name="merge adapter", **IN_THREAD)
convert = convert_task.with_options(task_run_name="convert-gguf {outtype}", **IN_THREAD)
quantize = quantize_task.with_options(**IN_THREAD)


def quantize_threads(cores: int | None = None) -> int:
    """llama.cpp threads for each quantize child: every core, for each of the children running at once. The
    quantizer's threads take rows in chunks from a shared counter and block (they do not spin) between tensors, so
    the kernel shares the cores by the work left: the cheap type (Q8_0) finishes early and the expensive k-quant search
    (Q4_K_M) then has every core, where an even split left half the cores idle for its last minute (7B on 16 cores:
    Q8_0 30 s, Q4_K_M 89 s at 8 threads each)."""
    return max(1, cores or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


@contextlib.contextmanager
def settled(config: PipelineConfig | None = None, run: str = "") -> Iterator[list[PrefectFuture]]:
    """A list for futures that run in the background of the block; when the block ends, however it ends (an
    evaluation that failed), they are waited for: the run folder's lock outlives every stage that writes in it.
    Then the run's scratch folder goes, given the run's ``config`` (``export.scratch_dir``: a temporary GGUF in RAM
    must not outlive the run)."""
    futures: list[PrefectFuture] = []
    try:
        yield futures
    finally:
        wait(futures)
        if config is not None:
            remove_run_scratch(config.export.scratch_dir, run)


class ExportBranch:
    """The submitted export: ``merged`` (the merged model's folder) and the GGUF futures; ``ggufs()`` waits."""

    def __init__(self, merged: PrefectFuture, full: PrefectFuture, quantized: list[PrefectFuture], keep_full: bool):
        self.merged, self.full, self.quantized, self.keep_full = merged, full, quantized, keep_full

    def ggufs(self) -> list[GGUFFile]:
        """The GGUF files the run ships, full precision first when kept; drops a temporary full-precision file."""
        full = self.full.result()
        quantized = [file for future in self.quantized for file in future.result()]
        if self.keep_full or not quantized:
            return [full, *quantized]
        discard(full.path)
        log.info("deleted %s: export.keep_full_precision is off, it was the quantizer's input", full.path)
        return quantized


def export_branch(
    config: PipelineConfig, model: str, adapter: str, at: dict[str, str], stem: str, background: list[PrefectFuture]
) -> ExportBranch:
    """Submit merge -> convert -> one quantize per type (all at once) and return their futures (also added to
    ``background``: ``settled``)."""
    qtypes, keep_full = config.export.quantizations, config.export.keep_full_precision
    merged = merge.submit(model, adapter, **settings(config, "merge"), out_dir=at["merge"])
    # a full-precision file that only feeds the quantizer is not hashed (it never ships: ExportBranch.ggufs) and
    # goes to RAM where it fits
    temporary = bool(qtypes) and not keep_full
    scratch = config.export.scratch_dir if temporary else None
    # A plain LoRA on a 16-bit base is merged by the converter as it reads each weight, beside the merge (which the
    # smoke test's HF reference needs); anything else (a 4-bit base, DoRA ...) converts the merged model.
    fused = stream_merge_plan(model, adapter) is not None
    source = {"model_dir": model, "adapter_dir": adapter, "model_cfg": config.model} if fused else {"model_dir": merged}
    full = convert.submit(**source, outtype=config.export.outtype, out_dir=at["convert"], stem=stem,
                          digest=not temporary, scratch_dir=scratch)  # fmt: skip
    quantized = [quantize.submit(full, [qtype], at["convert"], threads=quantize_threads()) for qtype in qtypes]
    background += [merged, full, *quantized]
    return ExportBranch(merged, full, quantized, keep_full)
