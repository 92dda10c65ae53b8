"""Loading models and tokenizers the same way in every stage, and the answer-only token loss.

Weights load from safetensors only: a folder with pickle weights alone is refused (``UnsafeWeights``), since loading
a pickle can run code. Code shipped with a model runs only when ``model.trust_remote_code`` is set: every loader here
takes the value as a required argument and hands it to transformers explicitly (left out, transformers would ask
``[y/N]`` on stdin, and a "y" from a pipe would run the code), and a refusal is a ``RemoteCodeRefused`` naming the
setting. Both are permanent errors (no retry).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from r1lib.compat import bound_chat_templates
from r1lib.config import ModelConfig
from r1lib.data.template_sandbox import name_template, template_file
from r1lib.errors import ConfigError, RemoteCodeRefused, UnsafeWeights

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# from_pretrained sets process-wide state (torch's default dtype, transformers' quantized-loading flag): stages that
# build models at once in threads of one flow process (evaluation beside the export's merge) take turns building.
MODEL_BUILD_LOCK = threading.RLock()


@contextlib.contextmanager
def remote_code_policy(source: str, trust_remote_code: bool) -> Iterator[None]:
    """Around a transformers loading call: never prompt, and turn transformers' refusal of a model's own code into a
    RemoteCodeRefused that names the folder and the setting."""
    from r1lib.compat import never_prompt_for_remote_code

    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be True or False, not {trust_remote_code!r}")
    never_prompt_for_remote_code()
    try:
        yield
    except ValueError as exc:
        if trust_remote_code or "trust_remote_code" not in str(exc):
            raise
        raise RemoteCodeRefused(
            f"{source} ships Python code (an auto_map in its config) that would run on loading; "
            "model.trust_remote_code is off, so it was not run and the model is refused. Read the code, then set "
            "model.trust_remote_code: true only if you trust it"
        ) from None


def check_weights(model_dir: str) -> None:
    """A local model folder holds safetensors weights; pickle weights alone are refused before anything loads."""
    folder = Path(model_dir)
    if not folder.is_dir():
        return  # a hub id: transformers downloads safetensors only (use_safetensors=True)
    names = [p.name for p in folder.iterdir()]
    if any(n.endswith(".safetensors") or n.endswith(".safetensors.index.json") for n in names):
        return
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UnsafeWeights(
            f"{model_dir}: weights only as pickle files {pickles[:5]}, which can run code when loaded; refused. "
            "Convert them to safetensors in a sandbox you trust (e.g. huggingface's convert.py) and point "
            "model.name_or_path at the result"
        )
    raise UnsafeWeights(f"{model_dir}: no *.safetensors weights in the folder (found {sorted(names)[:10]})")


def load_config(model_dir: str, cfg: ModelConfig):
    """The model's transformers config, with the configured trust, revision and token."""
    from transformers import AutoConfig

    with remote_code_policy(model_dir, cfg.trust_remote_code):
        return AutoConfig.from_pretrained(
            model_dir, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision, token=hub_token(cfg)
        )


def is_prequantized(
    model_dir: str, trust_remote_code: bool, revision: str | None = None, token: str | None = None
) -> bool:
    """True for checkpoints saved already quantized (e.g. unsloth's ``-bnb-4bit`` uploads)."""
    from transformers import AutoConfig

    with remote_code_policy(model_dir, trust_remote_code):
        config = AutoConfig.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, revision=revision, token=token
        )
    return getattr(config, "quantization_config", None) is not None


def adaptable_module_names(model_dir: str, cfg: ModelConfig) -> dict[str, str]:
    """{dotted name: class name} of every module of the model's architecture that LoRA can adapt (linear,
    embedding and convolution layers), built on the meta device from its config: no weights are read."""
    import torch
    from transformers import AutoModelForCausalLM

    config = load_config(model_dir, cfg)
    with remote_code_policy(model_dir, cfg.trust_remote_code), torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d)
    return {
        name: type(module).__name__
        for name, module in model.named_modules()
        if name and (isinstance(module, kinds) or type(module).__name__ == "Conv1D")  # GPT-2 style Conv1D
    }


def check_lora_targets(modules: dict[str, str], targets: list[str], model: str) -> None:
    """Every LoRA target names a module of ``modules`` (adaptable_module_names), matched as peft matches it (the whole
    dotted name or its ending); else ConfigError naming the field and the model's own choices."""
    from r1lib.errors import ConfigError

    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in modules)]
    if missing:
        choices = sorted({n.rsplit(".", 1)[-1] for n in modules})
        raise ConfigError(
            f"train.lora.target_modules {missing}: no such module in {model} that LoRA can adapt "
            f"(a linear, embedding or convolution layer; this model's: {choices})"
        )


def _embedded_modules() -> dict[str, str]:
    """The adaptable modules of the embedded model's architecture (Qwen2; the names do not depend on its size)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    shape = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    with torch.device("meta"):
        model = Qwen2ForCausalLM(shape)
    kinds = (torch.nn.Linear, torch.nn.Embedding)
    return {name: type(m).__name__ for name, m in model.named_modules() if name and isinstance(m, kinds)}


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(name: str) -> bool:
    """``org/name`` as the hub spells a repository (not a path that starts with '.' or '/')."""
    return bool(HUB_ID.match(name)) and not name.startswith((".", "/"))


def check_model_config(cfg: ModelConfig, targets: list[str]) -> None:
    """Before any work: for the embedded model or a local model folder (under model.allowed_roots), the LoRA targets
    exist in its architecture, its weights are safetensors and its code is not needed unless trusted. A hub id is
    checked when it is resolved (its config comes from the hub)."""
    from r1lib.config import EMBEDDED
    from r1lib.paths import check_model_dir, confine, resolve_roots

    name = cfg.name_or_path
    if name == EMBEDDED:
        check_lora_targets(_embedded_modules(), targets, "the embedded model")
        return
    folder = Path(name).expanduser()
    if not folder.is_dir() and is_hub_id(name):
        return
    roots = resolve_roots(cfg.allowed_roots)
    confine(name, roots, "model.allowed_roots")
    if not folder.is_dir():
        raise ConfigError(f"model {name!r} is neither a local model directory nor a hub id (org/name)")
    check_model_dir(folder, roots)
    if not (folder / "config.json").is_file():
        return  # the resolve stage says what is wrong with the folder
    check_weights(str(folder))
    check_lora_targets(adaptable_module_names(str(folder), cfg), targets, str(folder))


def hub_token(cfg: ModelConfig) -> str | None:
    """The hub token from the configured Prefect Secret block; None lets huggingface_hub read HF_TOKEN itself.
    The token is passed to the loaders only, never logged, stored in results or written to any output."""
    if not cfg.hub_token_secret:
        return None
    from prefect.blocks.system import Secret

    return Secret.load(cfg.hub_token_secret).get()


def load_tokenizer(model_dir: str, *, trust_remote_code: bool, revision: str | None = None, token: str | None = None):
    """The tokenizer of a model or adapter folder (or hub id); ``trust_remote_code`` must be given: see the module."""
    from transformers import AutoTokenizer

    with remote_code_policy(model_dir, trust_remote_code):
        tokenizer = AutoTokenizer.from_pretrained(
            model_dir, trust_remote_code=trust_remote_code, revision=revision, token=token
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Its chat template renders in a budget of memory and time, and a refusal names the file it came from.
    bound_chat_templates()
    name_template(getattr(tokenizer, "chat_template", None), template_file(model_dir))
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

    check_weights(model_dir)
    kwargs = {}
    if four_bit and not is_prequantized(model_dir, cfg.trust_remote_code, cfg.revision, hub_token(cfg)):
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(),
            **({"bnb_4bit_quant_storage": getattr(torch, quant_storage)} if quant_storage else {}),
        )
    with MODEL_BUILD_LOCK, remote_code_policy(model_dir, cfg.trust_remote_code), refuse_pickles(model_dir):
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


def check_adapter(adapter_dir: str) -> None:
    """A LoRA adapter folder holds a whole ``adapter_model.safetensors``; pickle weights beside it or instead of it, a
    pickle renamed ``.safetensors`` or a truncated file are refused (UnsafeWeights, permanent) naming the file, before
    peft reads anything (it would ``torch.load`` an ``adapter_model.bin``)."""
    from r1lib.training.checkpoints import safetensors_problem

    folder = Path(adapter_dir)
    # training_args.bin: the trainer's own record of its arguments beside the adapter; nothing here or in peft reads it
    pickles = sorted(
        p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES) and p.name != "training_args.bin"
    )
    if pickles:
        raise UnsafeWeights(
            f"{adapter_dir}: pickle files {pickles[:5]} in the adapter folder, which can run code when "
            "loaded; refused. This pipeline writes adapters as safetensors only: train it again"
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise UnsafeWeights(f"{adapter_dir}: no adapter_model.safetensors (found {sorted(os.listdir(folder))[:10]})")
    problem = safetensors_problem(weights)
    if problem:
        raise UnsafeWeights(f"{weights}: {problem}; refused")


def load_adapter(model, adapter_dir: str):
    """``PeftModel.from_pretrained(model, adapter_dir)`` after ``check_adapter``."""
    from peft import PeftModel

    check_adapter(adapter_dir)
    return PeftModel.from_pretrained(model, adapter_dir)


@contextlib.contextmanager
def refuse_pickles(source: str) -> Iterator[None]:
    """Around ``from_pretrained(use_safetensors=True)``: a hub repository without safetensors weights is an
    UnsafeWeights (permanent), not an OSError that a retry would repeat."""
    try:
        yield
    except OSError as exc:
        if "safetensors" not in str(exc) or os.path.isdir(source) and any(Path(source).glob("*.safetensors")):
            raise
        raise UnsafeWeights(f"{source}: no safetensors weights, and pickle weights are never loaded ({exc})") from None


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
