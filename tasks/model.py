"""Loading models and tokenizers the same way in every stage, and the answer-only token loss.

A model is a hub id (``deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B``), a local directory, or ``embedded`` (built from
code, see tasks/embedded.py). Weights load from safetensors only, and code shipped with a model runs only when
``model.trust_remote_code`` is set. A local directory, every file it links to and every file its safetensors index
names must lie under ``model.allowed_roots`` (tasks/paths.py).
"""

from __future__ import annotations

import re
from pathlib import Path

from prefect import task

from tasks.config import EMBEDDED, ModelConfig
from tasks.errors import ConfigError
from tasks.orchestration import stage_options
from tasks.paths import check_model_dir, confine, resolve_roots

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(cfg: ModelConfig, cache_dir: str) -> str:
    """A local directory or hub id to load from; builds the embedded model on first use. Anything but an existing
    directory or a hub id is a path, so it is confined too: ``../../etc`` is refused as outside the roots."""
    name = cfg.name_or_path
    if name == EMBEDDED:
        from tasks.embedded import ensure_embedded_model

        return str(ensure_embedded_model(cfg.embedded, Path(cache_dir)))
    path = Path(name).expanduser()
    if not path.is_dir() and HUB_ID.match(name) and not name.startswith((".", "/")):
        return name
    roots = resolve_roots(cfg.allowed_roots)
    confine(name, roots, "model.allowed_roots")
    if not path.is_dir():
        raise ConfigError(f"model {name!r} is neither a local model directory nor a hub id (org/name)")
    if not (path / "config.json").exists():
        raise ConfigError(f"{path}: not a model directory (no config.json)")
    check_model_dir(path, roots)
    return str(path)


def is_prequantized(model_dir: str) -> bool:
    """True for checkpoints saved already quantized (e.g. unsloth's ``-bnb-4bit`` uploads)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return getattr(config, "quantization_config", None) is not None


def hub_token(cfg: ModelConfig) -> str | None:
    """The hub token from the configured Prefect Secret block; None lets huggingface_hub read HF_TOKEN itself.
    The token is passed to the loaders only, never logged, stored in results or written to any output."""
    if not cfg.hub_token_secret:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(cfg.hub_token_secret).get()


def load_tokenizer(model_dir: str, trust_remote_code: bool = False, revision: str | None = None,
                   token: str | None = None):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code, revision=revision,
                                              token=token)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def compute_dtype():
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_causal_lm(model_dir: str, cfg: ModelConfig, four_bit: bool, quant_storage: str | None = None):
    """The base model, 4-bit NF4 (QLoRA) or in its compute dtype, on this process's GPU when there is one.
    ``quant_storage`` (FSDP): the dtype the packed 4-bit weights are stored in, so FSDP can shard them."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {}
    if four_bit and not is_prequantized(model_dir):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(),
            **({"bnb_4bit_quant_storage": getattr(torch, quant_storage)} if quant_storage else {}),
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=compute_dtype(), use_safetensors=True, trust_remote_code=cfg.trust_remote_code,
        revision=cfg.revision, token=hub_token(cfg), device_map=None if quant_storage or not torch.cuda.is_available() else {"": torch.cuda.current_device()},
        **kwargs,
    )
    model.config.use_cache = False
    return model


def answer_token_nll(model, input_ids, labels, attention_mask=None, chunk: int = 1024):
    """(summed negative log-likelihood, token count) over the labelled positions only.

    Projects only the hidden states whose next-token label is not -100 through the LM head, a chunk at a time, so
    evaluation never holds ``batch x seq x vocab`` logits (the evaluation-loop OOM the peers hit).
    """
    import torch

    backbone = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    hidden, targets = hidden[mask], targets[mask]
    head = model.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk):
        logits = head(hidden[start:start + chunk]).float()
        total = total + torch.nn.functional.cross_entropy(logits, targets[start:start + chunk], reduction="sum")
    return total, int(mask.sum())


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="resolve-model", **stage_options(timeout_seconds=3600))
def resolve_model_task(cfg: ModelConfig, cache_dir: str) -> str:
    """Find the base model (hub id or local directory), or build the embedded one on first use."""
    model_dir = resolve_model(cfg, cache_dir)
    print(f"base model: {model_dir}" + ("  (trust_remote_code is ON)" if cfg.trust_remote_code else ""))
    return model_dir
