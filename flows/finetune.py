"""Fine-tune a DeepSeek-R1 distilled model with 4-bit LoRA, from raw data to a smoke-tested GGUF.

    python -m flows.finetune                        # the embedded tiny model on the shipped sample data (CPU, ~3 min)
    python -m flows.finetune --preset r1-qwen-1.5b  # a real model (GPU); see README.md
    python -m flows.finetune --set train.max_steps=20 --set data.train_paths='["my.jsonl"]'

Every stage is a Prefect task (tasks/<stage>.py) that reads its input from paths and writes its output under
``runs/<run>/<stage>/``; only small typed results travel between them. The summary lands in ``runs/<run>/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Annotated, Any

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BeforeValidator

from flows.data import run_data_stages
from tasks.card import card_task
from r1lib.config import PRESETS, PipelineConfig, preset
from tasks.evaluate import evaluate_task
from tasks.export import convert_task, merge_task, quantize_task
from tasks.resolve_model import resolve_model_task
from r1lib.policy import gpu_slot
from r1lib.paths import check_config_paths
from tasks.smoke import smoke_task
from tasks.summary import render, summary_task
from tasks.train import train_task


def expand_preset(value: Any) -> Any:
    """A partial config (a deployment's or the UI's parameters) applies over its preset, like ``--config`` does:
    ``{"preset": "tiny", "train": {"max_steps": 5}}`` is the tiny preset with five steps, not the class defaults."""
    if isinstance(value, dict):
        return _merge(preset(value.get("preset", "tiny")).model_dump(), value)
    return value


# The flow's parameter type: a PipelineConfig, where a partial dict means "this preset, with these fields changed".
PresetConfig = Annotated[PipelineConfig, BeforeValidator(expand_preset)]


def run_name() -> str:
    """Readable flow-run names in the UI: ``finetune tiny -> runs/tiny-0123abcd45 (90 steps)``."""
    config = flow_run.parameters.get("config")
    if not isinstance(config, PipelineConfig):
        config = PipelineConfig.model_validate(expand_preset(config or {}))
    steps = config.train.max_steps if config.train.max_steps > 0 else f"{config.train.epochs:g} epochs"
    return f"finetune {config.preset} -> {config.run_dir()} ({steps}{' steps' if config.train.max_steps > 0 else ''})"


# Readable task-run names (the stages' own names stay the cache identity; these only label the runs in the UI).
resolve_model = resolve_model_task.with_options(task_run_name="resolve-model {cfg.name_or_path}")
train = train_task.with_options(task_run_name="train ({cfg.backend}, {cfg.max_steps} steps, lr {cfg.learning_rate})")
evaluate = evaluate_task.with_options(task_run_name="evaluate (max {cfg.max_examples} held-out rows)")
merge = merge_task.with_options(task_run_name="merge adapter")
convert = convert_task.with_options(task_run_name="convert-gguf {outtype}")
smoke_test = smoke_task.with_options(task_run_name="smoke-test {cfg.max_tokens} tokens")


@flow(name="r1-finetune", flow_run_name=run_name, log_prints=True)
def finetune(config: PresetConfig = preset("tiny")) -> dict:
    """validate -> dedup -> augment -> debias -> tokenize -> train (QLoRA) -> evaluate -> merge -> GGUF -> quantize
    -> smoke. The data stages are task maps over shards (flows/data.py), on the task runner ``config.runner`` names.

    Every stage's result is cached on its inputs, its code and its input files (r1lib/policy.py), so a retry
    of a failed run starts at the failed stage. Training, evaluation and the merge hold one slot of the ``gpu``
    global concurrency limit: two runs never share one GPU.
    """
    check_config_paths(config)  # every configured file under data.allowed_roots, before any stage does work
    run = str(config.run_dir())
    model = resolve_model(config.model, config.cache_dir)
    # validate -> dedup (train/test deduplicated and leak-free) -> augment -> debias -> tokenize, mapped over shards
    prepared = run_data_stages(config, model, run)
    data, train_rows, test_rows, replay_rows = prepared.data, prepared.train, prepared.test, prepared.replay

    with gpu_slot():
        trained = train(train_rows.dataset, test_rows.dataset, model, config.model, config.train, config.tokenize, run)
        evaluation = evaluate(model, trained.adapter, data.test, test_rows.dataset,
                              replay_rows.dataset if replay_rows else None,
                              config.model, config.evaluate, config.tokenize, run)
        merged = merge(model, trained.adapter, config.model, run)

    f16 = convert(merged, config.export.outtype, run)
    quantized = [quantize_task(f16, qtype, run) for qtype in config.export.quantizations]
    smoke = smoke_test(merged, [f16, *quantized], config.smoke, run)
    card_task(config, run, [f16, *quantized], trained, evaluation, smoke)  # Modelfiles + model card

    summary = summary_task(config, run, data=data, augmented=prepared.augmented, debiased=prepared.debiased,
                           tokenized=train_rows, trained=trained, evaluation=evaluation, ggufs=[f16, *quantized],
                           smoke=smoke)
    # What a caller (the nightly flow) needs to re-evaluate another adapter on exactly this held-out set.
    summary["eval_inputs"] = {"model_dir": model, "test_records": data.test, "test_dataset": test_rows.dataset,
                              "replay_dataset": replay_rows.dataset if replay_rows else None, "merged": merged}
    return summary


def config_from_args(argv: list[str]) -> PipelineConfig:
    parser = argparse.ArgumentParser(prog="python -m flows.finetune", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--config", help="a JSON file of PipelineConfig fields, applied over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field, dotted (train.max_steps=20); VALUE is JSON, or a plain string")
    args = parser.parse_args(argv)
    data = preset(args.preset).model_dump()
    if args.config:
        data = _merge(data, json.loads(open(args.config, encoding="utf-8").read()))
    for item in args.set:
        key, _, raw = item.partition("=")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return PipelineConfig.model_validate(data)


def _merge(base: dict, override: dict) -> dict:
    return {k: _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
            for k, v in {**base, **override}.items()}


if __name__ == "__main__":
    summary = finetune(config_from_args(sys.argv[1:]))
    print("\n" + render(summary) + f"\n\nsummary: {summary['run_dir']}/summary.json")
