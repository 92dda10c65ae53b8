"""Fine-tune a DeepSeek-R1 distilled model with 4-bit LoRA, from raw data to a smoke-tested GGUF.

    python -m flows.finetune                        # the embedded tiny model on the shipped sample data (CPU)
    python -m flows.finetune --preset r1-qwen-1.5b  # a real model (GPU); see README.md
    python -m flows.finetune --set train.max_steps=20 --set data.train_paths='["my.jsonl"]'
    python -m flows.finetune --stop-after tokenize  # the data stages only: inspect the prepared data first

Each stage is a Prefect task in tasks/, declared once in r1lib/stages.py; this flow calls them in that order and
hands every stage its inputs and its own output folder (``runs/<run>/<stage>/``); only small typed results travel
between them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from prefect import flow
from prefect.runtime import flow_run
from pydantic import BaseModel, BeforeValidator

from flows.data import PreparedData, run_data_stages
from r1lib.config import PipelineConfig
from r1lib.export.gguf import GGUFFile
from r1lib.io import exclusive_dir
from r1lib.model.gpu_memory import apply_cap
from r1lib.ops.cli import run_command
from r1lib.ops.gpu_slot import gpu_slot
from r1lib.ops.recovery import close_out_orphans
from r1lib.ops.tracking import tracked_run
from r1lib.preflight import preflight
from r1lib.presets import expand_preset, preset
from r1lib.process import apply_defaults
from r1lib.stages import Candidate, HeldOut, folders, settings
from tasks.card import CardResult, card_task
from tasks.evaluate import Evaluation, evaluate_task
from tasks.export import convert_task, merge_task, quantize_task
from tasks.fairness import FairnessReport, fairness_task
from tasks.resolve_model import resolve_model_task
from tasks.smoke import SmokeReport, smoke_task
from tasks.summary import RunSummary, summary_task
from tasks.train import TrainResult, train_task

# The flow's parameter type: a PipelineConfig, where a partial dict means "this preset, with these fields changed".
PresetConfig = Annotated[PipelineConfig, BeforeValidator(expand_preset)]
TINY = preset("tiny")


class FinetuneResult(BaseModel):
    """Everything a caller (the nightly flow, a script) needs of one run. A data-only run (``stop_after``) has the
    data and the summary only."""

    run_dir: str
    model_dir: str
    data: PreparedData
    summary: RunSummary
    held_out: HeldOut | None = None
    trained: TrainResult | None = None
    evaluation: Evaluation | None = None
    fairness: FairnessReport | None = None
    merged: str | None = None
    ggufs: list[GGUFFile] = []
    smoke: SmokeReport | None = None
    card: CardResult | None = None


def run_name() -> str:
    """Readable flow-run names in the UI: ``finetune tiny -> runs/tiny-0123abcd45 (90 steps)``."""
    config = flow_run.parameters.get("config")
    if not isinstance(config, PipelineConfig):
        config = PipelineConfig.model_validate(expand_preset(config or {}))
    steps = f"{config.train.max_steps} steps" if config.train.max_steps > 0 else f"{config.train.epochs:g} epochs"
    return f"finetune {config.preset} -> {config.run_dir()} ({steps})"


# Readable task-run names (the stages' own names stay the cache identity; these only label the runs in the UI).
resolve_model = resolve_model_task.with_options(task_run_name="resolve-model {cfg.name_or_path}")
train = train_task.with_options(task_run_name="train ({cfg.backend}, {cfg.max_steps} steps, lr {cfg.learning_rate})")
evaluate = evaluate_task.with_options(task_run_name="evaluate (max {cfg.max_examples} held-out rows)")
merge = merge_task.with_options(task_run_name="merge adapter")
convert = convert_task.with_options(task_run_name="convert-gguf {outtype}")
fairness_check = fairness_task.with_options(task_run_name="fairness (max {cfg.max_prompts} twin prompts)")
smoke_test = smoke_task.with_options(task_run_name="smoke-test {cfg.max_tokens} tokens")


@flow(name="r1-finetune", flow_run_name=run_name, log_prints=True)
def finetune(config: PresetConfig = TINY) -> FinetuneResult:
    """validate -> dedup -> augment -> debias -> tokenize -> train (QLoRA) -> evaluate -> fairness -> merge -> GGUF
    -> quantize -> smoke -> card -> summary (r1lib/stages.py). The data stages are task maps over shards
    (flows/data.py). Each stage gets its own output folder (``at``) and its configuration sections (``settings``).

    Every stage's result is cached on its inputs, its code and its input files (r1lib/policy.py), so a retry of a
    failed run starts at the failed stage. Training, evaluation and the merge hold one slot of the ``gpu`` global
    concurrency limit: two runs never share one GPU.
    """
    apply_defaults()  # a worker-started run gets the command line's process defaults too
    close_out_orphans()  # what a killed earlier attempt left Running, and the GPU slot it held (r1lib/ops/recovery.py)
    preflight(config)  # paths under the roots, launch preset, cluster size, model folder: before any stage works
    apply_cap(config.train.max_gpu_memory_gib)  # binds every GPU stage that runs in this process
    run = str(config.run_dir())
    # One run per folder (a second run of this run_name fails at once, naming the first); one tracker run per flow run.
    with exclusive_dir(run), tracked_run(config, run) as tracker:
        at = folders(run)
        model = resolve_model(config.model, config.cache_dir, config.train.lora.target_modules)
        data = run_data_stages(config, model, run)  # validate -> dedup -> augment -> debias -> tokenize
        if config.stop_after == "tokenize":
            summary = summary_task(config, run, data.results())
            tracker.log_run(data.results(), files=[Path(run) / "summary.json"])
            return FinetuneResult(run_dir=run, model_dir=model, data=data, summary=summary)

        held_out = data.held_out()
        with gpu_slot():
            trained = train(
                data.train.dataset, data.test.dataset, model, **settings(config, "train"), out_dir=at["train"]
            )
            candidate = Candidate(model_dir=model, adapter_dir=trained.adapter)
            evaluation = evaluate(candidate, held_out, **settings(config, "evaluate"), out_dir=at["evaluate"])
            fairness = fairness_check(candidate, held_out, **settings(config, "fairness"), out_dir=at["fairness"])
            merged = merge(model, trained.adapter, **settings(config, "merge"), out_dir=at["merge"])

        f16 = convert(merged, config.export.outtype, at["convert"], stem=Path(run).name)
        ggufs = [f16, *(quantize_task(f16, config.export.quantizations) if config.export.quantizations else [])]
        smoke = smoke_test(merged, ggufs, data.test.dataset, evaluation.decoding, config.smoke, at["smoke"])
        results = [*data.results(), trained, evaluation, fairness, smoke]
        fingerprint = data.validated.fingerprint
        card = card_task(config, ggufs, evaluation.decoding, fingerprint, results, trained.loss_curve, at["card"])
        summary = summary_task(config, run, [*results, card])
        tracker.log_run([*results, card], ggufs, [Path(run) / "summary.json", card.readme, trained.loss_curve])
        return FinetuneResult(
            run_dir=run,
            model_dir=model,
            data=data,
            held_out=held_out,
            trained=trained,
            evaluation=evaluation,
            fairness=fairness,
            merged=merged,
            ggufs=ggufs,
            smoke=smoke,
            card=card,
            summary=summary,
        )


def main(argv: list[str]) -> int:
    """``python -m flows.finetune``: the same as ``r1-finetune run``."""
    return run_command(finetune, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
