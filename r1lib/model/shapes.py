"""The one table of the real R1-Distill models' shapes: the fields of each model's ``config.json`` on the hub.

The throughput bench (bench/train_throughput.py), the rehearsal (r1lib/rehearsal/shapes.py) and the scale tests
(tests/lib/model/test_scale.py) build or describe these models from here, so they cannot disagree. Only the fields
that decide the architecture, memory and FLOPs are kept (not dtype, initializer range or transformers version).
``r1lib.model.shape.ModelShape`` reads the memory and FLOPs out of any such dict.

Token ids are the ``config.json``'s: R1-Distill-Qwen's says bos = eos = 151643 (Qwen's ``<|endoftext|>``); its
tokenizer's BOS, ``<｜begin▁of▁sentence｜>``, is 151646, which ``generation_config.json`` names (``R1_BOS``).
"""

from __future__ import annotations

import copy

_QWEN2 = dict(
    architectures=["Qwen2ForCausalLM"],
    model_type="qwen2",
    hidden_act="silu",
    attention_dropout=0.0,
    max_position_embeddings=131072,
    sliding_window=4096,
    use_sliding_window=False,
    bos_token_id=151643,
    eos_token_id=151643,
    tie_word_embeddings=False,
)

MODELS: dict[str, dict] = {
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B (from Qwen2.5-Math-1.5B)
    "r1-qwen-1.5b": dict(
        _QWEN2,
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_window_layers=21,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        vocab_size=151936,
    ),
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-7B (from Qwen2.5-Math-7B)
    "r1-qwen-7b": dict(
        _QWEN2,
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_window_layers=28,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        vocab_size=152064,
    ),
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-14B (from Qwen2.5-14B)
    "r1-qwen-14b": dict(
        _QWEN2,
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=48,
        num_attention_heads=40,
        num_key_value_heads=8,
        max_window_layers=48,
        rms_norm_eps=1e-5,
        rope_theta=1000000.0,
        vocab_size=152064,
    ),
    # deepseek-ai/DeepSeek-R1-Distill-Llama-8B (from Llama-3.1-8B: its 131,072-token context through llama3 RoPE
    # scaling of the 8,192 it was pre-trained at)
    "r1-llama-8b": dict(
        architectures=["LlamaForCausalLM"],
        model_type="llama",
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        rms_norm_eps=1e-5,
        vocab_size=128256,
        bos_token_id=128000,
        eos_token_id=128001,
        tie_word_embeddings=False,
    ),
}

# The BOS id of each family's R1 tokenizer (and generation_config.json), where config.json says another.
R1_BOS = {"qwen2": 151646, "llama": 128000}


def config_fields(name: str, **changes) -> dict:
    """A copy of ``MODELS[name]`` with ``changes`` over it (a toy size of the same layout, other token ids)."""
    return {**copy.deepcopy(MODELS[name]), **changes}
