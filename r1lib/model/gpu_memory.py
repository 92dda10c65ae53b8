"""The GPU memory this process may use: an optional cap (``train.max_gpu_memory_gib``) and what is left under it.

The cap is PyTorch's per-process memory fraction, so it binds every allocation of every stage that runs in the
process (training, evaluation, the merge, the smoke test's HF reference): the caching allocator refuses to reserve
past it, exactly as a smaller card would. The flow sets it once, before the first stage; a training rank sets it
for itself. ``available_bytes`` is what a stage plans with.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

GIB = 2**30
_cap_bytes: int | None = None


def apply_cap(gib: float | None) -> int | None:
    """Cap this process's PyTorch allocations on its current GPU at ``gib`` GiB (None: lift a cap set before).
    Returns the cap in bytes, or None without a cap or without CUDA."""
    global _cap_bytes
    import torch

    if not torch.cuda.is_available():
        return None
    device = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(device).total_memory
    if gib is None:
        if _cap_bytes is not None:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            _cap_bytes = None
        return None
    cap = min(int(gib * GIB), total)
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    if _cap_bytes != cap:
        log.info("GPU memory capped at %.1f GiB of the card's %.1f GiB", cap / GIB, total / GIB)
    _cap_bytes = cap
    return cap


def cap_bytes() -> int | None:
    """The cap set by ``apply_cap`` in this process (None: the whole card)."""
    return _cap_bytes


def available_bytes() -> int | None:
    """Bytes this process can still allocate on its current GPU: the device's free memory plus what PyTorch holds
    reserved but unused, and never more than the cap leaves. None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    allocated = torch.cuda.memory_allocated()
    available = free + torch.cuda.memory_reserved() - allocated
    if _cap_bytes is not None:
        available = min(available, _cap_bytes - allocated)
    fraction = getattr(torch.cuda, "get_per_process_memory_fraction", None)  # a fraction set by anyone (torch >= 2.7)
    if fraction is not None:
        available = min(available, int(fraction() * total) - allocated)
    return max(0, available)


def release() -> None:
    """Free what earlier stages of this process left: their models sit in reference cycles (trainer, callbacks,
    adapters) until a full collection, and PyTorch keeps freed blocks reserved, which counts against a cap."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def peak_gib() -> dict[str, float] | None:
    """This process's peak allocated and reserved GPU memory since the last reset, in GiB (None without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return {
        "allocated": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "reserved": round(torch.cuda.max_memory_reserved() / GIB, 2),
    }
