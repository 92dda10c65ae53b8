"""A decoder model's shape from its ``config.json``, and the memory and FLOPs that follow from it.

Used to plan before loading: training (r1lib/training/plan.py), evaluation (merged or adapter generation) and the
smoke test's HF reference. Only Llama/Qwen2-style decoders (attention + gated MLP) are described; for any other
architecture ``ModelShape.read`` returns None and the callers keep their configured settings.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

BYTES_4BIT = 0.53  # NF4 with double-quantized absmax constants, per parameter (bitsandbytes blocksize 64)


class ModelShape(BaseModel):
    model_type: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def read(cls, model_dir: str | Path) -> ModelShape | None:
        """The shape of the model in ``model_dir`` (its config.json), or None when it is not a local Llama/Qwen2-style
        decoder."""
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            return None
        return cls.of_config(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def of_config(cls, config: dict) -> ModelShape | None:
        """The shape a transformers config dict describes, or None when it is not a Llama/Qwen2-style decoder."""
        config = config.get("text_config", config)
        try:
            heads = int(config["num_attention_heads"])
            hidden = int(config["hidden_size"])
            return cls(
                model_type=str(config.get("model_type", "")),
                hidden=hidden,
                layers=int(config["num_hidden_layers"]),
                intermediate=int(config["intermediate_size"]),
                heads=heads,
                kv_heads=int(config.get("num_key_value_heads") or heads),
                head_dim=int(config.get("head_dim") or hidden // heads),
                vocab=int(config["vocab_size"]),
                tied_embeddings=bool(config.get("tie_word_embeddings", False)),
            )
        except (KeyError, TypeError, ValueError):
            return None

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of one decoder layer."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder layers' linear projections (what 4-bit quantization shrinks)."""
        return self.layers * sum(a * b for a, b in self.module_shapes().values())

    @property
    def embedding_params(self) -> int:
        """Input embeddings plus the LM head (once when tied)."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params

    def weight_bytes(self, four_bit: bool, dtype_bytes: int = 2) -> int:
        """Weights in memory: 4-bit decoder linears with 16-bit embeddings, or everything at ``dtype_bytes``."""
        linear = self.linear_params * (BYTES_4BIT if four_bit else dtype_bytes)
        return int(linear + self.embedding_params * dtype_bytes)

    def lora_params(self, r: int, targets: list[str]) -> int:
        shapes = self.module_shapes()
        return self.layers * sum(r * (a + b) for name, (a, b) in shapes.items() if name in targets)

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """The generation cache (keys and values of every layer) per token."""
        return 2 * self.layers * self.kv_dim * dtype_bytes

    def layer_activation_bytes(self, dtype_bytes: int = 2) -> int:
        """Activations one decoder layer keeps for its backward pass, per token: the normalized inputs and norms
        (4h), queries, keys and values before and after rotary embedding (2(q + 2kv)), the attention output and its
        softmax statistics (2q), and the gated MLP's gate, up, activation and down-projection input (4i)."""
        attention = 2 * (self.q_dim + 2 * self.kv_dim) + 2 * self.q_dim
        return dtype_bytes * (4 * self.hidden + attention + 4 * self.intermediate)

    def flops_per_token(self, seq_len: float, labelled_fraction: float = 1.0, recompute: bool = False) -> float:
        """Training FLOPs per token of a frozen 4-bit base with LoRA (adapters' own ~0.5% left out).

        Model FLOPs (MFU): 4N (forward + input gradient; the frozen base has no weight gradient) + 4Vh on labelled
        positions (LM head forward + input gradient) + 6 L d l (causal attention: forward 2dl, backward 4dl, with
        ``seq_len`` the mean attended length). ``recompute``: the FLOPs executed under gradient checkpointing (HFU):
        one more forward of the decoder, 6N + 4Vh + 8 L d l."""
        n = self.linear_params
        attention = self.layers * self.q_dim * seq_len
        head = 4 * self.vocab * self.hidden * labelled_fraction
        return (6 if recompute else 4) * n + head + (8 if recompute else 6) * attention
