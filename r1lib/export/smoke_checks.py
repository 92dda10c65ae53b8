"""Which smoke-test checks run, and how strictly: the proportionate parts of tasks/smoke.py.

- ``perplexity_types``: the GGUFs that get the (CPU-heavy) held-out perplexity pass;
- ``reference_dtype``: the HF reference model's dtype within the GPU memory this process may use;
- ``compare_greedy``: greedy-token parity between the HF merged model and the full-precision GGUF, with an optional
  tolerance for a near tie that rounding decides.
"""

from __future__ import annotations

import logging

from r1lib.config import SmokeConfig
from r1lib.export.gguf import FULL_PRECISION, GGUFFile

log = logging.getLogger(__name__)


def reference_dtype(merged_dir: str) -> str:
    """float32 for the HF reference, unless that would not fit the GPU memory this process may use (a 7B model at
    float32 is 30 GB): then bfloat16."""
    from r1lib.model.gpu_memory import available_bytes
    from r1lib.model.shape import ModelShape

    available, shape = available_bytes(), ModelShape.read(merged_dir)
    if available is None or shape is None or shape.params * 4 * 1.15 < available * 0.85:
        return "float32"
    log.info("the HF reference loads in bfloat16: %.1f GB at float32 does not fit the GPU memory", shape.params * 4e-9)
    return "bfloat16"


def compare_greedy(hf_tokens: list[int], gguf_tokens: list[int], hf_logits=None, tolerance: float = 0.0):
    """(tokens equal before the first difference, near tie or None). A difference is a near tie when HF scored the
    GGUF's token within ``tolerance`` logits of its own choice: rounding decides such a step, and the two greedy
    continuations legitimately part there."""
    matching = next(
        (i for i, (a, b) in enumerate(zip(hf_tokens, gguf_tokens)) if a != b), min(len(hf_tokens), len(gguf_tokens))
    )
    if tolerance <= 0 or hf_logits is None or matching >= min(len(hf_tokens), len(gguf_tokens)):
        return matching, None
    step = hf_logits[matching]
    gap = float(step[hf_tokens[matching]] - step[gguf_tokens[matching]])
    return matching, ({"token": matching, "logit_gap": round(gap, 5)} if gap <= tolerance else None)


def perplexity_types(cfg: SmokeConfig, ggufs: list[GGUFFile]) -> list[str]:
    """The GGUF types that get the perplexity pass (``SmokeConfig.gguf_perplexity``)."""
    quantized = [g.type for g in ggufs if g.type not in FULL_PRECISION]
    choice = cfg.gguf_perplexity
    if choice == "auto":
        full = [g for g in ggufs if g.type in FULL_PRECISION]
        small = all(g.bytes < 2 * 2**30 for g in full)
        choice = "all" if small or llama_gpu_offload() else "quantized"
    return {"all": [g.type for g in ggufs], "quantized": quantized, "none": []}[choice]


def llama_gpu_offload() -> bool:
    """Whether the installed llama.cpp can run layers on a GPU (a CPU build cannot)."""
    try:
        import llama_cpp

        return bool(llama_cpp.llama_supports_gpu_offload())
    except (ImportError, AttributeError, OSError):
        return False
