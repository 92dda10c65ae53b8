"""Merging a LoRA adapter into 16-bit safetensors shard by shard, without building the model.

For the common case (a plain LoRA adapter on the linear projections of an unquantized bf16/fp16 checkpoint) the merge
reads one shard at a time, adds ``scale * B @ A`` (computed in float32) to each adapted weight, and writes the shard
under the same name: peak host memory is one shard instead of the whole model plus a save buffer, no model is built,
and the GPU is never touched. Anything else (DoRA, extra saved modules, per-layer rank or alpha patterns, adapted
embeddings, float32 or quantized weights) returns no plan, and the caller merges through peft instead.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from r1lib.errors import ExportCheckError

ADAPTER_FILE = "adapter_model.safetensors"
HALF_DTYPES = {"BF16", "F16"}
COPIED = ("config.json", "generation_config.json", "model.safetensors.index.json")
MERGE_SPEC = "lora_merge.json"  # in a conversion view: what the converter child merges as it reads (r1lib/compat.py)


def _shards(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [model_dir / name for name in names]
    single = model_dir / "model.safetensors"
    return [single] if single.is_file() else []


def _declares_quantization(model_dir: Path) -> bool:
    """A ``quantization_config`` in the base's config.json: the merge dequantizes through peft (tasks/export.py), so
    neither it nor the converter may take the weights as plain 16-bit ones."""
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # no readable config: not the plain case
    return not isinstance(config, dict) or config.get("quantization_config") is not None


def stream_merge_plan(model_dir: str | Path, adapter_dir: str | Path) -> dict | None:
    """What a shard-by-shard merge needs (the scale and, per adapted weight, its LoRA key pair), or None when the
    adapter or checkpoint is not the plain case this merge handles."""
    from safetensors import safe_open

    model_dir, adapter_dir = Path(model_dir), Path(adapter_dir)
    config_path, weights = adapter_dir / "adapter_config.json", adapter_dir / ADAPTER_FILE
    if not config_path.is_file() or not weights.is_file():
        return None
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ExportCheckError(f"{config_path}: not readable JSON ({exc}); train the adapter again") from None
    if not isinstance(config, dict):
        raise ExportCheckError(f"{config_path}: not a JSON object; train the adapter again")
    plain = (
        config.get("peft_type") == "LORA"
        and not config.get("use_dora")
        and not config.get("modules_to_save")
        and not config.get("rank_pattern")
        and not config.get("alpha_pattern")
        and not config.get("fan_in_fan_out")
        and not config.get("lora_bias")
        and not config.get("layer_replication")
        and config.get("bias", "none") == "none"
    )
    shards = _shards(model_dir)
    if not plain or not shards or _declares_quantization(model_dir):
        return None
    try:
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportCheckError(f"{config_path}: no LoRA rank and alpha ({type(exc).__name__}: {exc})") from None
    if r < 1:
        raise ExportCheckError(f"{config_path}: r = {r}; a LoRA adapter's rank is at least 1: train it again")
    scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
    pairs: dict[str, tuple[str, str]] = {}
    shapes: dict[str, list[int]] = {}
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            shapes[key] = handle.get_slice(key).get_shape()
            if not key.endswith(".lora_A.weight"):
                if not key.endswith(".lora_B.weight"):
                    return None  # embeddings, magnitudes or anything else: peft knows how
                continue
            target = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
            pairs[target] = (key, key.replace(".lora_A.weight", ".lora_B.weight"))
    found: dict[str, list[int]] = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            for key in handle.keys():
                if handle.get_slice(key).get_dtype() not in HALF_DTYPES:
                    return None  # float32 or quantized weights: the peft path handles dtype and dequantizing
                found[key] = handle.get_slice(key).get_shape()
    if not pairs or set(pairs) - set(found):
        return None
    for target, (a, b) in pairs.items():
        check_pair(weights, r, target, found[target], shapes[a], shapes.get(b), b)
    return {"scale": scale, "pairs": pairs, "shards": [str(s) for s in shards]}


def check_pair(weights: Path, r: int, target: str, weight: list[int], a: list[int], b: list[int] | None, b_key: str):
    """Raise ExportCheckError naming the adapter file unless ``B @ A`` has the shape of ``target`` at rank ``r``:
    ``merged_weight`` would broadcast a row or a column over the whole weight where peft refuses to load it."""
    if b is None:
        raise ExportCheckError(f"{weights}: no {b_key} beside its lora_A: not a whole LoRA adapter; train it again")
    if len(a) != 2 or len(b) != 2 or (a[0], b[1]) != (r, r) or [b[0], a[1]] != list(weight):
        raise ExportCheckError(
            f"{weights}: the LoRA pair of {target} has shapes A {a} and B {b}, not A [{r}, {weight[-1]}] and "
            f"B [{weight[0]}, {r}] for rank r = {r} and the base weight {weight}: not this base's adapter"
        )


def merged_weight(weight, a, b, scale: float):
    """``W + scale * B @ A`` in float32, back in W's dtype: the one merge arithmetic of the streamed merge and of the
    converter merging as it reads (r1lib/compat.py: ``lora_merged_conversion`` gets this function), so both write the
    same bits. ``a`` and ``b`` are float32."""
    return (weight.float() + (b @ a) * scale).to(weight.dtype)


def stream_merge(model_dir: str | Path, adapter_dir: str | Path, plan: dict, out_dir: Path) -> None:
    """Write the merged checkpoint into ``out_dir`` (shards under their names, the index and configs copied;
    ``use_cache`` on for inference). ``plan`` comes from ``stream_merge_plan``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    adapter = {}
    with safe_open(str(Path(adapter_dir) / ADAPTER_FILE), framework="pt") as handle:
        for key in handle.keys():
            adapter[key] = handle.get_tensor(key)
    for shard in plan["shards"]:
        tensors = {}
        with safe_open(shard, framework="pt") as handle:
            metadata = handle.metadata() or {}
            for key in handle.keys():
                weight = handle.get_tensor(key)
                if key in plan["pairs"]:
                    a, b = (adapter[k].float() for k in plan["pairs"][key])
                    weight = merged_weight(weight, a, b, plan["scale"])
                tensors[key] = weight.contiguous()
        save_file(tensors, str(out_dir / Path(shard).name), metadata={**metadata, "format": "pt"})
        del tensors
    copy_configs(model_dir, out_dir)


def copy_configs(model_dir: Path, out_dir: Path) -> None:
    """The base's configs and index into the merged folder, ``use_cache`` on for inference."""
    for name in COPIED:
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out_dir / name)
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    config["use_cache"] = True
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def conversion_view(model_dir: str | Path, adapter_dir: str | Path, plan: dict, tokenizer, out_dir: Path) -> Path:
    """A folder llama.cpp's converter reads as the merged model before the merge is written: the base's shards
    (linked, not copied), its index and configs as ``stream_merge`` writes them, the merged model's tokenizer, and
    ``MERGE_SPEC`` (the adapter file, the scale, each adapted weight's LoRA pair), from which the converter child adds
    ``scale * B @ A`` to each weight as it reads it, with ``stream_merge``'s arithmetic (r1lib/compat.py:
    ``lora_merged_conversion``). The GGUF is then the merged model's, and the export does not wait for the merge."""
    model_dir, out_dir = Path(model_dir).resolve(), Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for shard in plan["shards"]:
        (out_dir / Path(shard).name).symlink_to(Path(shard).resolve())
    copy_configs(model_dir, out_dir)
    tokenizer.save_pretrained(out_dir)
    spec = {
        "adapter": str((Path(adapter_dir) / ADAPTER_FILE).resolve()),
        "scale": plan["scale"],
        "pairs": {target: list(pair) for target, pair in plan["pairs"].items()},
    }
    (out_dir / MERGE_SPEC).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return out_dir
