"""Loading models and tokenizers the same way in every stage, and the answer-only token loss.

Weights load from safetensors only, and code shipped with a model runs only when ``model.trust_remote_code`` is set.
"""

from __future__ import annotations

from r1lib.config import ModelConfig


def is_prequantized(model_dir: str) -> bool:
    """True for checkpoints saved already quantized (e.g. unsloth's ``-bnb-4bit`` uploads)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    return getattr(config, "quantization_config", None) is not None


def linear_module_names(model_dir: str, cfg: ModelConfig) -> set[str]:
    """The last name part of every module of the model's architecture (``q_proj``, ``down_proj``, ...), built on the
    meta device from its config: no weights are read."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(
        model_dir, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision, token=hub_token(cfg)
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def hub_token(cfg: ModelConfig) -> str | None:
    """The hub token from the configured Prefect Secret block; None lets huggingface_hub read HF_TOKEN itself.
    The token is passed to the loaders only, never logged, stored in results or written to any output."""
    if not cfg.hub_token_secret:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(cfg.hub_token_secret).get()


def load_tokenizer(
    model_dir: str, trust_remote_code: bool = False, revision: str | None = None, token: str | None = None
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_dir, trust_remote_code=trust_remote_code, revision=revision, token=token
    )
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
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(),
            **({"bnb_4bit_quant_storage": getattr(torch, quant_storage)} if quant_storage else {}),
        )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir,
        dtype=compute_dtype(),
        use_safetensors=True,
        trust_remote_code=cfg.trust_remote_code,
        revision=cfg.revision,
        token=hub_token(cfg),
        device_map=None if quant_storage or not torch.cuda.is_available() else {"": torch.cuda.current_device()},
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
        logits = head(hidden[start : start + chunk]).float()
        total = total + torch.nn.functional.cross_entropy(logits, targets[start : start + chunk], reduction="sum")
    return total, int(mask.sum())


def perplexity(model, dataset_dir: str, batch_size: int, max_rows: int | None = None) -> float:
    """Token-weighted perplexity over the answer (labelled) tokens: exp(sum NLL / answer tokens)."""
    import math

    total, count = answer_nll(model, dataset_dir, batch_size, max_rows)
    return math.exp(total / max(count, 1))


def answer_nll(model, dataset_dir: str, batch_size: int, max_rows: int | None = None) -> tuple[float, int]:
    """(summed NLL, answer tokens) of a tokenized dataset (input_ids, labels); the HF side of GGUF parity too."""
    import torch
    from datasets import load_from_disk

    rows = load_from_disk(dataset_dir)
    if max_rows is not None:
        rows = rows.select(range(min(max_rows, len(rows))))
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start : start + batch_size]
            width = max(len(ids) for ids in batch["input_ids"])
            ids = torch.tensor([x + [0] * (width - len(x)) for x in batch["input_ids"]], device=device)
            labels = torch.tensor([x + [-100] * (width - len(x)) for x in batch["labels"]], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch["input_ids"]], device=device)
            nll, n = answer_token_nll(model, ids, labels, mask)
            total, count = total + nll.item(), count + n
    return total, count


def dequantize_4bit(model, dtype=None):
    """Replace every bitsandbytes 4-bit linear of ``model`` by a plain linear holding its dequantized weight (one
    module at a time, so the peak is the full-precision model plus one 4-bit layer), in place; returns the model.

    The result computes the same function as the 4-bit model (whose forward dequantizes the same NF4 values at every
    call), without the per-step dequantization: what merging an adapter or fast generation needs. Uses
    bitsandbytes' public ``dequantize_4bit``; transformers' own ``model.dequantize()`` returned wrong weights on a
    CPU build of bitsandbytes 0.50.2."""
    import torch
    from bitsandbytes.functional import dequantize_4bit as bnb_dequantize

    from r1lib.compat import forget_quantized_loading

    dtype = dtype or compute_dtype()
    targets = [(name, module) for name, module in model.named_modules() if type(module).__name__ == "Linear4bit"]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
            module.state_dict()  # bitsandbytes repacks CPU weights on a first forward; saving restores its layout
        weight = bnb_dequantize(module.weight.data, module.weight.quant_state).to(dtype)
        linear = torch.nn.utils.skip_init(  # no random init of billions of weights about to be overwritten
            torch.nn.Linear,
            module.in_features,
            module.out_features,
            bias=module.bias is not None,
            device=weight.device,
            dtype=dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(weight.reshape(module.out_features, module.in_features))
            if module.bias is not None:
                linear.bias.copy_(module.bias.to(dtype))
        linear.requires_grad_(False)
        setattr(parent, child, linear)
        del weight, module
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    forget_quantized_loading(model)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, flag, False):
            setattr(model, flag, False)
    return model
