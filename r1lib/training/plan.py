"""The memory plan: gradient checkpointing and the micro-batch, chosen from the model's shape and the GPU memory.

On a CUDA machine with ``train.memory_plan: auto`` the plan estimates, before loading anything, what training needs:
the 4-bit weights, the LoRA weights with their gradients and optimizer state, and the activations per token (without
recompute every layer keeps its activations; with it each layer keeps its input, Unsloth moves those to the CPU, and
one layer's activations live at a time). Then, within the memory this process may use (the card, or
``train.max_gpu_memory_gib``):

- no recompute when a micro-batch of at least ``MIN_TOKENS`` tokens (or the configured micro-batch) fits without it:
  it saves the extra forward pass, about a quarter of the step on a big card;
- otherwise recompute, at the configured micro-batch or the largest smaller one that fits;
- the micro-batch always divides the per-process effective batch, which stays as configured.

Explicit settings win: ``gradient_checkpointing: true/false`` is never changed, and ``memory_plan: off`` keeps the
configured micro-batch. Every choice comes with its reason, for the train stage's log and result. Without CUDA or
without a known shape the plan keeps the configuration (``auto`` checkpointing meaning on).
"""

from __future__ import annotations

from pydantic import BaseModel

from r1lib.config import ModelConfig, TrainConfig
from r1lib.model.gpu_memory import GIB, available_bytes, cap_bytes
from r1lib.model.shape import ModelShape

HEADROOM = 0.85  # of the available memory: the caching allocator's fragmentation and kernels' workspaces
RESERVE_BYTES = 1 * GIB  # cuBLAS/compile workspaces, the CUDA graph pools, the loss chunks
MIN_TOKENS = 4096  # a micro-batch this large keeps an H100/H200 busy; below it, recompute at a larger one pays more
ACTIVATION_MARGIN = 1.25  # over the per-layer count in ModelShape.layer_activation_bytes (allocator rounding, kernels)
RECOMPUTE_WORKING_SET = 1.6  # layers alive at once under recompute (one recomputed, its gradients), calibrated on
# the 8B shape with Unsloth: 8.5 GiB at micro-batch 4 and 10.8 GiB at 8, seq 2048, on an H100
OPTIMIZER_BYTES = {"adamw_8bit": 2, "adamw_torch": 8, "adafactor": 4}  # per trainable parameter


class MemoryPlan(BaseModel):
    """What training runs with, and why."""

    micro_batch: int
    accumulation: int  # per process
    gradient_checkpointing: bool
    planned: bool  # False: the configuration as it is (no CUDA, no known shape, or nothing to choose)
    budget_gib: float | None = None
    estimate_gib: float | None = None  # the plan's estimate of peak training memory with the chosen settings
    reasons: list[str] = []

    def describe(self) -> str:
        what = (
            f"micro-batch {self.micro_batch} x accumulation {self.accumulation}, gradient checkpointing "
            f"{'on' if self.gradient_checkpointing else 'off'}"
        )
        return f"{what}: " + "; ".join(self.reasons)


def training_bytes(
    shape: ModelShape,
    cfg: TrainConfig,
    backend: str,
    four_bit: bool,
    tokens: int,
    recompute: bool,
) -> int:
    """Estimated peak GPU memory of training ``tokens`` tokens per micro-batch."""
    fixed = shape.weight_bytes(four_bit)
    lora = shape.lora_params(cfg.lora.r, cfg.lora.target_modules)
    fixed += lora * (4 + 4 + OPTIMIZER_BYTES.get(cfg.optimizer, 8))  # fp32 weights, gradients, optimizer state
    layer = shape.layer_activation_bytes() * ACTIVATION_MARGIN
    if recompute:
        per_token = layer * RECOMPUTE_WORKING_SET
        if backend != "unsloth":  # transformers keeps every layer's input on the GPU; Unsloth offloads them
            per_token += 2 * shape.hidden * shape.layers
    else:
        per_token = layer * shape.layers
    per_token += 8 * shape.hidden  # the final norm's output and its fp32 gradient through the chunked LM head
    return int(fixed + tokens * per_token + RESERVE_BYTES)


def divisors_descending(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def plan_memory(
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    model_dir: str,
    backend: str,
    max_seq_length: int,
    micro_batch: int,
    accumulation: int,
    launch: str = "single",
    budget: int | None = None,
) -> MemoryPlan:
    """The memory plan for one training process. ``micro_batch`` x ``accumulation`` is this process's share of the
    effective batch; ``budget`` (bytes) overrides the memory measured on this process's GPU."""
    explicit_gc = cfg.gradient_checkpointing if isinstance(cfg.gradient_checkpointing, bool) else None
    keep = MemoryPlan(
        micro_batch=micro_batch,
        accumulation=accumulation,
        gradient_checkpointing=True if explicit_gc is None else explicit_gc,
        planned=False,
    )
    budget = budget if budget is not None else available_bytes()
    if budget is None:
        auto = " (gradient_checkpointing auto: on)" if explicit_gc is None else ""
        keep.reasons.append(f"no CUDA device: the configured settings{auto}")
        return keep
    if cfg.memory_plan == "off" and explicit_gc is not None:
        keep.reasons.append("train.memory_plan is off and gradient_checkpointing is set: as configured")
        return keep
    if launch == "fsdp":
        keep.reasons.append("FSDP shards the weights over the ranks: the configured settings, checkpointing on")
        return keep
    shape = ModelShape.read(model_dir)
    if shape is None:
        keep.reasons.append(f"no Llama/Qwen2-style config.json in {model_dir}: the configured settings")
        return keep

    usable = int(budget * HEADROOM)
    where = f"{usable / GIB:.1f} GiB usable of {budget / GIB:.1f} GiB available" + (
        f" (cap {cap_bytes() / GIB:.0f} GiB)" if cap_bytes() else ""
    )
    per_process = micro_batch * accumulation
    sizes = divisors_descending(per_process) if cfg.memory_plan == "auto" else [micro_batch]
    sizes = [s for s in sizes if s >= cfg.smallest_micro_batch] or sizes  # KTO's KL term: two rows at least
    four_bit = model_cfg.load_in_4bit

    def need(size: int, recompute: bool) -> int:
        return training_bytes(shape, cfg, backend, four_bit, size * max_seq_length, recompute)

    def plan(size: int, recompute: bool, reason: str) -> MemoryPlan:
        return MemoryPlan(
            micro_batch=size,
            accumulation=per_process // size,
            gradient_checkpointing=recompute,
            planned=True,
            budget_gib=round(usable / GIB, 2),
            estimate_gib=round(need(size, recompute) / GIB, 2),
            reasons=[reason, where],
        )

    if explicit_gc is not True:
        fits = [s for s in sizes if need(s, False) <= usable]
        if fits and (fits[0] * max_seq_length >= MIN_TOKENS or fits[0] >= micro_batch or explicit_gc is False):
            size = fits[0]
            why = (
                f"without recompute a micro-batch of {size} x {max_seq_length} tokens needs "
                f"{need(size, False) / GIB:.1f} GiB"
            )
            if explicit_gc is False:
                why = "gradient_checkpointing is off (set); " + why
            return plan(size, False, why)
        if explicit_gc is False:
            size = fits[0] if fits else sizes[-1]
            return plan(
                size,
                False,
                f"gradient_checkpointing is off (set), though micro-batch {size} needs an estimated "
                f"{need(size, False) / GIB:.1f} GiB",
            )
    recompute_sizes = [s for s in sizes if s <= micro_batch]
    fits = [s for s in recompute_sizes if need(s, True) <= usable]
    size = fits[0] if fits else recompute_sizes[-1]
    no_recompute = need(recompute_sizes[-1], False)
    why = (
        "gradient_checkpointing is on (set)"
        if explicit_gc
        else f"without recompute even micro-batch {recompute_sizes[-1]} needs {no_recompute / GIB:.1f} GiB"
    )
    why += f"; with recompute micro-batch {size} needs {need(size, True) / GIB:.1f} GiB"
    if not fits:
        why += " (more than usable: the out-of-memory retry halves it further)"
    return plan(size, True, why)


def resolved_checkpointing(cfg: TrainConfig) -> bool:
    """Gradient checkpointing as the backends apply it: 'auto' that no plan resolved means on."""
    return cfg.gradient_checkpointing if isinstance(cfg.gradient_checkpointing, bool) else True
