"""Stage 0, resolve-model: the base model to load, as a local directory or a hub id.

A model is a hub id (``deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B``), a local directory, or ``embedded`` (built from
code on first use, see r1lib/model/embedded.py). A local directory, every file it links to and every file its
safetensors index names must lie under ``model.allowed_roots`` (r1lib/paths.py).
"""

from __future__ import annotations

from pathlib import Path

from prefect import task

from r1lib.config import EMBEDDED, ModelConfig
from r1lib.errors import ConfigError
from r1lib.model.loading import adaptable_module_names, check_lora_targets, check_weights, is_hub_id
from r1lib.paths import InputPath, OutputPath, check_model_dir, confine, resolve_roots
from r1lib.policy import stage_options


def resolve_model(cfg: ModelConfig, cache_dir: str) -> str:
    """A local directory or hub id to load from; builds the embedded model on first use. Anything but an existing
    directory or a hub id is a path, so it is confined too: ``../../etc`` is refused as outside the roots."""
    name = cfg.name_or_path
    if name == EMBEDDED:
        from r1lib.model.embedded import ensure_embedded_model

        return str(ensure_embedded_model(cfg.embedded, Path(cache_dir)))
    path = Path(name).expanduser()
    if not path.is_dir() and is_hub_id(name):
        return name
    roots = resolve_roots(cfg.allowed_roots)
    confine(name, roots, "model.allowed_roots")
    if not path.is_dir():
        raise ConfigError(f"model {name!r} is neither a local model directory nor a hub id (org/name)")
    if not (path / "config.json").exists():
        raise ConfigError(f"{path}: not a model directory (no config.json)")
    check_model_dir(path, roots)
    check_weights(str(path))  # pickle weights alone are refused here, before any data stage runs
    return str(path)


# --- Prefect ------------------------------------------------------------------------------------------------------


def check_target_modules(model_dir: str, cfg: ModelConfig, target_modules: list[str]) -> None:
    """Every LoRA target names a module of the model's architecture that LoRA can adapt (r1lib.model.loading), or
    ConfigError before any data stage."""
    check_lora_targets(adaptable_module_names(model_dir, cfg), target_modules, model_dir)


@task(name="resolve-model", task_run_name="resolve-model {cfg.name_or_path}", **stage_options(timeout_seconds=3600))
def resolve_model_task(cfg: ModelConfig, cache_dir: OutputPath, target_modules: list[str]) -> InputPath:
    """Find the base model (hub id or local directory), or build the embedded one on first use; check that the LoRA
    targets exist in it."""
    model_dir = resolve_model(cfg, cache_dir)
    check_target_modules(model_dir, cfg, target_modules)
    print(f"base model: {model_dir}" + ("  (trust_remote_code is ON)" if cfg.trust_remote_code else ""))
    return model_dir
