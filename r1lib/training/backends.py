"""Training backends: the 4-bit base with LoRA adapters, and the training method's TRL trainer around it.

  unsloth  ``FastLanguageModel.from_pretrained(load_in_4bit=True)`` + ``get_peft_model(use_gradient_checkpointing=
           "unsloth")``; needs an NVIDIA GPU.
  hf       transformers + bitsandbytes NF4 + peft: the fallback, the CPU path, and the benchmark baseline.
  auto     unsloth when CUDA is available and unsloth imports, else hf.

Both train through the trainer of the method ``train.method`` names (r1lib/training/methods/: SFT is TRL's
``SFTTrainer`` on the tokenize stage's rows). ``build_trainer`` is that one path (fresh model + trainer; the adapter
starts from ``train.init_adapter``'s weights when set); bench/train_throughput.py measures it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from r1lib.compat import install_torch_chunked_logprob
from r1lib.config import ModelConfig, TrainConfig
from r1lib.errors import ConfigError
from r1lib.training.methods import METHODS, TrainerSpec
from r1lib.training.plan import resolved_checkpointing

log = logging.getLogger(__name__)


def choose_backend(cfg: TrainConfig) -> str:
    import torch

    if cfg.backend == "unsloth" and not torch.cuda.is_available():
        raise ConfigError("train.backend = unsloth needs an NVIDIA GPU; use 'auto' or 'hf' on this machine")
    if cfg.backend != "auto":
        return cfg.backend
    if torch.cuda.is_available():
        try:
            import unsloth  # noqa: F401

            return "unsloth"
        except ImportError:
            log.warning("unsloth is not installed: training with transformers + peft (pip install '.[gpu]')")
    return "hf"


def load_unsloth(model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig, max_seq_length: int):
    import torch
    from unsloth import FastLanguageModel

    from r1lib.model.loading import remote_code_policy

    extra = {"revision": model_cfg.revision} if model_cfg.revision else {}
    with remote_code_policy(model_dir, model_cfg.trust_remote_code):
        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=model_dir,
            max_seq_length=max_seq_length,
            load_in_4bit=model_cfg.load_in_4bit,
            dtype=None,
            trust_remote_code=model_cfg.trust_remote_code,
            **extra,
            # under torchrun each rank loads its own copy onto its own GPU
            **({"device_map": {"": torch.cuda.current_device()}} if "LOCAL_RANK" in os.environ else {}),
        )
    model = FastLanguageModel.get_peft_model(
        model,
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        random_state=cfg.seed,
        max_seq_length=max_seq_length,
        use_gradient_checkpointing="unsloth" if resolved_checkpointing(cfg) else False,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def load_hf(model_dir: str, model_cfg: ModelConfig, cfg: TrainConfig, quant_storage: str | None = None):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from r1lib.model.loading import load_causal_lm, load_tokenizer

    model = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit, quant_storage=quant_storage)
    if model_cfg.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=resolved_checkpointing(cfg))
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    return model, load_tokenizer(model_dir, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)


def init_adapter_folder(path: str) -> Path:
    """The adapter folder ``train.init_adapter`` names: the folder itself, or a run folder's ``train/adapter``."""
    for folder in (Path(path), Path(path) / "train" / "adapter"):
        if (folder / "adapter_config.json").is_file():
            return folder
    raise ConfigError(
        f"train.init_adapter = {path}: no LoRA adapter there (no adapter_config.json in it or in its train/adapter); "
        "name an adapter folder or a run folder"
    )


def check_init_adapter(path: str, cfg: TrainConfig) -> Path:
    """The adapter folder ``train.init_adapter`` names, before any work: its adapter_config.json has train.lora's
    rank, alpha and target modules, and its weights are whole safetensors (``check_adapter``). Reads no weights."""
    from r1lib.model.loading import check_adapter

    folder = init_adapter_folder(path)
    config_file = folder / "adapter_config.json"
    try:
        saved = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"train.init_adapter = {path}: {config_file} cannot be read ({exc})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"train.init_adapter = {path}: {config_file} is not a JSON object")
    ours = {"r": cfg.lora.r, "lora_alpha": cfg.lora.alpha, "target_modules": sorted(cfg.lora.target_modules)}
    theirs = {"r": saved.get("r"), "lora_alpha": saved.get("lora_alpha"),
              "target_modules": sorted(saved.get("target_modules") or [])}  # fmt: skip
    if ours != theirs:
        raise ConfigError(
            f"train.init_adapter = {path}: the adapter in {folder} has {theirs}, train.lora has {ours}; "
            "set train.lora to the adapter's settings"
        )
    check_adapter(str(folder))
    return folder


def load_init_adapter(model, path: str, cfg: TrainConfig) -> Path:
    """Put the weights of the adapter ``train.init_adapter`` names (``check_init_adapter``) into the fresh LoRA
    adapter of ``model``; weights shaped for another model, or too few for its LoRA layers, are a ConfigError."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    folder = check_init_adapter(path, cfg)
    try:
        loaded = set_peft_model_state_dict(model, load_peft_weights(str(folder), device="cpu"))
    except RuntimeError as exc:  # torch's load_state_dict: "size mismatch for ...lora_A.default.weight: ..."
        if "size mismatch" not in str(exc):
            raise
        base = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
        mismatch = next((line.strip() for line in str(exc).splitlines() if "size mismatch" in line), str(exc)[:300])
        raise ConfigError(
            f"train.init_adapter = {path}: the adapter in {folder} was trained on another model ({base}): "
            f"{mismatch}; start from an adapter of model.name_or_path"
        ) from None
    if loaded.unexpected_keys:
        raise ConfigError(f"train.init_adapter = {path}: weights that fit no LoRA layer: {loaded.unexpected_keys[:5]}")
    # a model of the same width but more layers: the adapter leaves some LoRA layers at their fresh start
    unfilled = [key for key in loaded.missing_keys if ".lora_" in key]
    if unfilled:
        raise ConfigError(
            f"train.init_adapter = {path}: the adapter in {folder} has no weights for {len(unfilled)} LoRA weights "
            f"of this model (e.g. {unfilled[0]}): it was trained on another model; start from an adapter of "
            "model.name_or_path"
        )
    log.info("training starts from the adapter in %s (train.init_adapter)", folder)
    return folder


def build_trainer(spec: TrainerSpec):
    """A fresh model (4-bit base + LoRA) and the trainer of the method ``spec.cfg.method`` names around it; the one
    path both backends, every method, every launch preset and the benchmarks use. Returns (trainer, tokenizer)."""
    if spec.backend == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, peft and trl on import)
    from transformers import ProgressCallback

    class StepBar(ProgressCallback):
        """The step bar alone: losses go to the run's log and its training-progress artifact (fit.py), not as dicts
        printed under the bar."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            pass

    method = METHODS[spec.cfg.method]
    method.check_rows(spec.train_rows, "the training set")
    if spec.eval_rows is not None:
        method.check_rows(spec.eval_rows, "the held-out set")
    install_torch_chunked_logprob()
    if spec.backend == "unsloth":
        model, tokenizer = load_unsloth(spec.model_dir, spec.model_cfg, spec.cfg, spec.max_seq_length)
    else:
        model, tokenizer = load_hf(spec.model_dir, spec.model_cfg, spec.cfg, spec.quant_storage)
    if spec.cfg.init_adapter:
        load_init_adapter(model, spec.cfg.init_adapter, spec.cfg)
    trainer = method.build(spec, model, tokenizer)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(StepBar())
    return trainer, tokenizer
