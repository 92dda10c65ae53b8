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
from flows.export import IN_THREAD, export_branch, settled
from r1lib.config import PipelineConfig
from r1lib.export.gguf import GGUFFile
from r1lib.io import exclusive_dir
from r1lib.model.gpu_memory import apply_cap
from r1lib.ops.cli import run_command
from r1lib.ops.gpu_slot import gpu_slot
from r1lib.ops.recovery import close_out_orphans
from r1lib.ops.timeline import RunTimeline, timed
from r1lib.ops.tracking import tracked_run
from r1lib.preflight import preflight
from r1lib.presets import expand_preset, preset
from r1lib.process import apply_defaults
from r1lib.stages import Candidate, HeldOut, folders, settings
from r1lib.training.collapse import collapse_check
from tasks.card import CardResult, card_task
from tasks.evaluate import Evaluation, evaluate_task
from tasks.fairness import FairnessReport, fairness_task
from tasks.resolve_model import resolve_model_task
from tasks.smoke import SmokeReport, smoke_reference_task, smoke_task
from tasks.summary import RunSummary, summary_on_failure, summary_task
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
# ``timed()``: each run's start and end, for the summary's critical path (r1lib/ops/timeline.py); ``IN_THREAD``: the
# same for the stages submitted beside others, without the timeout Prefect cannot enforce in a thread (flows/export.py).
resolve_model = resolve_model_task.with_options(task_run_name="resolve-model {cfg.name_or_path}")
train = train_task.with_options(
    task_run_name="train ({cfg.backend}, {cfg.max_steps} steps, lr {cfg.learning_rate})", **timed()
)
evaluate = evaluate_task.with_options(task_run_name="evaluate (max {cfg.max_examples} held-out rows)", **IN_THREAD)
fairness_check = fairness_task.with_options(task_run_name="fairness (max {cfg.max_prompts} twin prompts)", **IN_THREAD)
smoke_reference = smoke_reference_task.with_options(**timed())
smoke_test = smoke_task.with_options(task_run_name="smoke-test {cfg.max_tokens} tokens", **timed())
write_card = card_task.with_options(**timed())


@flow(name="r1-finetune", flow_run_name=run_name, log_prints=True)
def finetune(config: PresetConfig = TINY) -> FinetuneResult:
    """validate -> dedup -> augment -> debias -> tokenize -> train (QLoRA) -> evaluate -> fairness -> merge -> GGUF
    -> quantize -> smoke -> card -> summary (r1lib/stages.py). The data stages are task maps over shards
    (flows/data.py). Each stage gets its own output folder (``at``) and its configuration sections (``settings``).

    Every stage's result is cached on its inputs, its code and its input files (r1lib/policy.py), so a retry of a
    failed run starts at the failed stage. After training the export branch (merge in host memory, GGUF, every
    quantized type at once: flows/export.py) runs beside evaluation and fairness, and the smoke test's HF reference
    model beside convert and quantize; only the GPU stages (training, evaluation, fairness, that HF reference) hold a
    slot of the ``gpu`` global concurrency limit, so two runs never share one GPU. The summary shows which stages
    overlapped and the critical path.
    """
    apply_defaults()  # a worker-started run gets the command line's process defaults too
    close_out_orphans()  # what a killed earlier attempt left Running, and the GPU slot it held (r1lib/ops/recovery.py)
    preflight(config)  # paths under the roots, launch preset, cluster size, model folder: before any stage works
    apply_cap(config.train.max_gpu_memory_gib)  # binds every GPU stage that runs in this process
    run = str(config.run_dir())
    # One run per folder: a second run of this run_name fails at once, naming the first; the lock is held until the
    # background stages (the export branch) have ended. A run that fails writes its summary: every stage that
    # finished (``finished``), the failed one and the setting to look at.
    # One tracker run per flow run (r1lib/ops/tracking.py).
    with (
        exclusive_dir(run),
        settled(config, run) as background,
        summary_on_failure(config, run) as finished,
        tracked_run(config, run) as tracker,
    ):
        at = folders(run)
        model = resolve_model(config.model, config.cache_dir, config.train.lora.target_modules)
        data = run_data_stages(config, model, run)  # validate -> dedup -> augment -> debias -> tokenize
        finished += data.results()
        if config.stop_after == "tokenize":
            summary = summary_task(config, run, data.results())
            tracker.log_run(data.results(), files=[Path(run) / "summary.json"])
            return FinetuneResult(run_dir=run, model_dir=model, data=data, summary=summary)

        held_out = data.held_out()
        with gpu_slot():  # only the GPU stages hold it: the export branch runs beside them and after
            trained = train(
                *data.training_sets(), model, **settings(config, "train"), out_dir=at["train"],
                replay_dataset_dir=data.preference_replay(),
            )  # fmt: skip
            candidate = Candidate(model_dir=model, adapter_dir=trained.adapter)
            exported = export_branch(config, model, trained.adapter, at, Path(run).name, background)  # no GPU
            evaluation = evaluate.submit(candidate, held_out, **settings(config, "evaluate"), out_dir=at["evaluate"])
            fairness = fairness_check.submit(
                candidate, held_out, **settings(config, "fairness"), out_dir=at["fairness"], wait_for=[evaluation]
            )
            evaluation = evaluation.result()
            finished += [trained, evaluation]
            collapse_check(evaluation, config, trained.steps)  # a collapsed model stops here, before the smoke test
            fairness = fairness.result()
            finished.append(fairness)
            # The smoke test's HF reference model, on the GPU now, beside convert and quantize (the merge, shorter
            # than evaluation, is done: a failed merge is reported as itself).
            merged = exported.merged.result()
            reference = smoke_reference(merged, data.test.dataset, config.smoke, at["smoke"])
        ggufs = exported.ggufs()
        smoke = smoke_test(merged, ggufs, data.test.dataset, evaluation.decoding, config.smoke, at["smoke"], reference)
        finished.append(smoke)
        results = [*data.results(), trained, evaluation, fairness, smoke]
        fingerprint = data.validated.fingerprint
        card = write_card(config, ggufs, evaluation.decoding, fingerprint, results, trained.loss_curve, at["card"])
        summary = summary_task(config, run, [*results, card, RunTimeline.of_current_run()])
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
