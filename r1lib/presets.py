"""Named starting points for a run, and how a partial configuration (CLI flags, a deployment's parameters, the UI
form) applies over one.

Presets: ``tiny`` (the embedded model, the whole DAG on a CPU in minutes) and the real DeepSeek-R1-Distill models.
A preset's ``preset`` field records its key, so a dumped configuration expands back to itself.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
from typing import Any

from pydantic import ValidationError

from r1lib.config import (
    AugmentConfig,
    EvalConfig,
    ExportConfig,
    LoraSettings,
    ModelConfig,
    PipelineConfig,
    SmokeConfig,
    TokenizeConfig,
    TrainConfig,
)
from r1lib.errors import ConfigError


def _tiny() -> PipelineConfig:
    # The whole DAG in a few minutes on two CPU cores. As many general replay rows as task rows: with 0.3 the general
    # chats' perplexity rose 2.58x, with 1.0 1.10x at 98% held-out accuracy (bench/results/tiny_replay.md).
    return PipelineConfig(
        preset="tiny",
        augment=AugmentConfig(prompt_variants=1, replay_ratio=1.0),
        train=TrainConfig(
            max_steps=90,
            learning_rate=1e-2,
            micro_batch_size=16,
            gradient_accumulation=1,
            warmup_ratio=0.05,
            optimizer="adamw_torch",
            gradient_checkpointing=False,
            save_steps=30,
            logging_steps=5,
            lora=LoraSettings(r=16, alpha=32),
        ),
        evaluate=EvalConfig(max_examples=60, batch_size=30, max_new_tokens=48),
    )


def _real(key: str, model_id: str, max_seq_length: int = 4096, micro_batch_size: int = 4) -> PipelineConfig:
    return PipelineConfig(
        preset=key,
        model=ModelConfig(name_or_path=model_id),
        tokenize=TokenizeConfig(max_seq_length=max_seq_length),
        train=TrainConfig(
            learning_rate=2e-4,
            micro_batch_size=micro_batch_size,
            gradient_accumulation=4,
            optimizer="adamw_8bit",
            packing=True,
            save_steps=100,
        ),
        evaluate=EvalConfig(max_examples=200, batch_size=16, max_new_tokens=1024),
        export=ExportConfig(quantizations=["Q4_K_M", "Q5_K_M", "Q8_0"]),
        smoke=SmokeConfig(max_tokens=512, n_ctx=4096),
    )


PRESETS = {
    "tiny": _tiny,
    "r1-qwen-1.5b": lambda: _real("r1-qwen-1.5b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", micro_batch_size=8),
    "r1-qwen-7b": lambda: _real("r1-qwen-7b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
    "r1-qwen-14b": lambda: _real("r1-qwen-14b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", micro_batch_size=2),
    "r1-llama-8b": lambda: _real("r1-llama-8b", "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"),
    "r1-llama-8b-unsloth-4bit": lambda: _real(
        "r1-llama-8b-unsloth-4bit", "unsloth/DeepSeek-R1-Distill-Llama-8B-unsloth-bnb-4bit"
    ),
}


def preset(name: str, **overrides) -> PipelineConfig:
    """A named preset, with top-level sections optionally replaced (``preset('tiny', run_name='x')``)."""
    if not isinstance(name, str) or name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    cfg = PRESETS[name]()
    return cfg.model_validate({**cfg.model_dump(), **overrides})


def expand_preset(value: Any) -> Any:
    """A partial config (a deployment's or the UI's parameters) applies over its preset, like ``--config`` does:
    ``{"preset": "tiny", "train": {"max_steps": 5}}`` is the tiny preset with five steps, not the class defaults."""
    if isinstance(value, dict):
        return merge(preset(value.get("preset", "tiny")).model_dump(), value)
    return value


def config_from_args(argv: list[str]) -> PipelineConfig:
    """The configuration the command line describes: a preset, then ``--config FILE``, then each ``--set``. Raises
    ConfigError (an unknown field, unreadable JSON) or pydantic's ValidationError (a bad value)."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.finetune",
        description="Fine-tune a DeepSeek-R1 distilled model, from raw data to a GGUF.",
    )
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--config", help="a JSON file of PipelineConfig fields, applied over the preset")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, dotted (train.max_steps=20); VALUE is JSON, or a plain string",
    )
    parser.add_argument(
        "--stop-after",
        choices=["tokenize"],
        help="run the data stages only (sets stop_after): inspect the prepared data before spending GPU time",
    )
    args = parser.parse_args(argv)
    data = preset(args.preset).model_dump()
    if args.config:
        data = merge(data, read_config_file(args.config))
    for item in args.set:
        set_field(data, item)
    if args.stop_after:
        data["stop_after"] = args.stop_after
    if data.get("preset") != args.preset:
        # The preset decides every field the file and the flags leave out: relabelling it would mislabel the run.
        raise ConfigError(
            f"preset {data.get('preset')!r} in --config/--set: a preset is chosen with --preset "
            f"{data.get('preset')} (it decides every field left out), not set as a field"
        )
    return PipelineConfig.model_validate(data)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"the key(s) {twice} appear twice in one object (which one would win is not obvious)")
    return dict(pairs)


def read_config_file(path: str) -> dict:
    """A ``--config`` file: one JSON object in a regular file (at most 1 MiB, no key twice in an object, a byte order
    mark allowed); else ConfigError."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or a device would block the read or never end
            raise ValueError("not a regular file")
        with open(path, "rb") as handle:
            raw = handle.read(2**20 + 1)
        if len(raw) > 2**20:
            raise ValueError("over 1 MiB; a configuration is a few KiB")
        # utf-8-sig: editors on Windows write a byte order mark before the JSON
        data = json.loads(raw.decode("utf-8-sig"), object_pairs_hook=_refuse_duplicate_keys)
    except RecursionError:
        raise ConfigError(f"--config {path}: nested too deeply") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--config {path}: {exc}") from None
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise ConfigError(f"--config {path}: a JSON object of PipelineConfig fields is expected, not a {kind}")
    return data


def set_field(data: dict, item: str) -> None:
    """Apply one ``section.field=value`` to a config dump; an unknown field is a ConfigError naming the known ones."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.max_steps=20")
    try:
        value = json.loads(raw, object_pairs_hook=_refuse_duplicate_keys)
    except json.JSONDecodeError:
        value = raw  # a bare word: the string itself (a field that wants a number or a bool refuses it)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(f"--set {key}: {exc if isinstance(exc, ValueError) else 'nested too deeply'}") from None
    node, *parents, leaf = [data, *key.split(".")]
    for depth, part in enumerate([*parents, leaf]):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(key.split(".")[:depth]) or "the configuration"
            known = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a section)"
            raise ConfigError(f"--set {key}: {where} has no field {part!r} (known: {known})")
        if depth < len(parents):
            node = node[part]
    # A whole section merges over what is there, as --config does; it never resets the other fields to defaults.
    node[leaf] = merge(node[leaf], value) if isinstance(value, dict) and isinstance(node[leaf], dict) else value


def describe(exc: ValidationError) -> str:
    """A validation error as one line per bad field: ``train.learning_rate: Input should be ... (got inf)``."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "config"
        got = error.get("input")
        shown = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
        lines.append(f"{where}: {error['msg']}{shown}")
    return "\n".join(lines)


def merge(base: dict, override: dict) -> dict:
    return {
        k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        for k, v in {**base, **override}.items()
    }
