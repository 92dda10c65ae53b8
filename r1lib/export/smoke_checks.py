"""Which smoke-test checks run, and how strictly: the proportionate parts of tasks/smoke.py.

- ``perplexity_types``: the GGUFs that get the (CPU-heavy) held-out perplexity pass;
- ``reference_dtype``: the HF reference model's dtype within the GPU memory this process may use;
- ``not_finite``: the perplexities that no limit can judge (NaN, infinite);
- ``compare_greedy``: greedy-token parity between the HF merged model and the full-precision GGUF, with an optional
  tolerance for a near tie that rounding decides;
- ``smoke_plan``: which GGUFs run at all, how many prompts each answers, which one the parity is checked on and how
  many tokens the perplexity pass reads (``perplexity_budget``).
"""

from __future__ import annotations

import logging
import math

from pydantic import BaseModel

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
    gap = logit_gap(hf_logits, hf_tokens, gguf_tokens, matching)
    return matching, ({"token": matching, "logit_gap": round(gap, 5)} if gap <= tolerance else None)


def logit_gap(hf_logits, hf_tokens: list[int], gguf_tokens: list[int], step: int) -> float:
    """How far below its own choice HF scored the GGUF's token at greedy step ``step``, in logits."""
    scores = hf_logits[step]
    return float(scores[hf_tokens[step]] - scores[gguf_tokens[step]])


def not_finite(perplexities: dict[str, float | None]) -> list[str]:
    """One problem per measured perplexity that is NaN or infinite ({what was scored: its perplexity}): every
    comparison with NaN is false, so the drift and quantization-loss limits would pass it."""
    return [
        f"{where}: perplexity {value} on the held-out rows is not a finite number (NaN or infinite logits)"
        for where, value in perplexities.items()
        if value is not None and not math.isfinite(value)
    ]


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


# Quantized types, most precise first: a proportionate smoke test checks greedy parity on the first one present.
BY_PRECISION = ("Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
BIG_GGUF_BYTES = 2 * 2**30  # from here a full-precision GGUF generates slowly on a CPU llama.cpp


class SmokePlan(BaseModel):
    """What the smoke test runs: ``run``, the GGUF types loaded in a child; ``prompts``, how many of
    ``smoke.prompts`` each answers; ``parity_on``, the type whose greedy tokens must equal the HF model's, within
    ``tolerance`` logits at a near tie."""

    run: list[str]
    prompts: int
    parity_on: str
    tolerance: float
    reason: str
    perplexity_tokens: int | None  # the perplexity pass's token budget per GGUF (``perplexity_budget``)


def proportionate_on(cfg: SmokeConfig, biggest_bytes: int, gpu_offload: bool | None = None) -> bool:
    """Whether the smoke test is proportionate (``smoke.proportionate``): on, or auto where the biggest GGUF is
    ``BIG_GGUF_BYTES`` or more and llama.cpp has no GPU."""
    if cfg.proportionate != "auto":
        return cfg.proportionate == "on"
    return biggest_bytes >= BIG_GGUF_BYTES and not (llama_gpu_offload() if gpu_offload is None else gpu_offload)


def perplexity_budget(cfg: SmokeConfig, proportionate: bool) -> int | None:
    """Tokens the perplexity pass reads per GGUF: ``perplexity_max_tokens``, capped by
    ``proportionate_perplexity_tokens`` where the smoke test is proportionate (None: no limit)."""
    caps = [cfg.perplexity_max_tokens] + ([cfg.proportionate_perplexity_tokens] if proportionate else [])
    caps = [c for c in caps if c is not None]
    return min(caps) if caps else None


def full_precision_bytes(model_dir: str) -> int:
    """The size of a 16-bit GGUF of the model in ``model_dir`` (2 bytes a parameter; 0 where its shape is unknown):
    what the smoke plan will see, known before any GGUF is written."""
    from r1lib.model.shape import ModelShape

    shape = ModelShape.read(model_dir)
    return shape.params * 2 if shape else 0


def smoke_plan(cfg: SmokeConfig, ggufs: list[GGUFFile], gpu_offload: bool | None = None) -> SmokePlan:
    """The proportionate plan (``smoke.proportionate``): where llama.cpp has no GPU and a GGUF is big, only the
    quantized files run, each answering one short prompt, and parity is checked on the most precise of them; else
    every file answers every prompt and parity is checked on the full-precision file (the most precise quantized one
    when none was kept)."""
    full = [g.type for g in ggufs if g.type in FULL_PRECISION]
    quantized = sorted(
        (g.type for g in ggufs if g.type not in FULL_PRECISION),
        key=lambda t: BY_PRECISION.index(t) if t in BY_PRECISION else len(BY_PRECISION),
    )
    on = proportionate_on(cfg, max((g.bytes for g in ggufs), default=0), gpu_offload)
    if on and quantized:
        reason = "proportionate: " + ("on" if cfg.proportionate == "on" else "llama.cpp has no GPU and a GGUF is big")
        plan = {"run": quantized, "prompts": 1, "parity_on": quantized[0], "reason": reason}
    else:
        parity = (full or quantized)[0]
        plan = {
            "run": [g.type for g in ggufs],
            "prompts": len(cfg.prompts),
            "parity_on": parity,
            "reason": "every GGUF",
        }
    exact = plan["parity_on"] in FULL_PRECISION
    tolerance = (
        cfg.parity_logit_tolerance if exact else max(cfg.parity_logit_tolerance, cfg.quantized_parity_logit_tolerance)
    )
    return SmokePlan(**plan, tolerance=tolerance, perplexity_tokens=perplexity_budget(cfg, on and bool(quantized)))
