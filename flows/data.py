"""The data stages as Prefect task maps over shards: validate -> dedup -> augment -> debias -> tokenize.

Each CPU-heavy stage is a map over shards (``runner.shard_rows`` records each, cut in input order) followed by a
small merge that joins the shards' outputs in shard order, so the files are the same, byte for byte, whichever task
runner ran the shards: Prefect's default thread pool, a Dask cluster (``runner.kind: dask``, prefect-dask) or Ray.
Dedup needs every row at once only for its decision: the keys (hashes, MinHash signatures) are mapped, one task
plans over all of them (duplicates, near duplicates and train/test leaks across shard boundaries), and the
survivors are written by a second map.

    runner.kind default   the shards run in threads of the flow's process
    runner.kind dask      a temporary LocalCluster of runner.workers processes, or the cluster at runner.address
    runner.kind ray       a temporary local Ray, or the cluster at runner.address (needs prefect-ray)
"""

from __future__ import annotations

import time

from prefect import flow, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from tasks.augment import AugmentedData, augment_merge_task, augment_shard_task
from tasks.config import PipelineConfig, RunnerConfig
from tasks.debias import DebiasedData, debias_merge_task, debias_shard_task
from tasks.dedup import (dedup_keys_task, dedup_merge_task, dedup_plan_task, dedup_write_task, passthrough_parts,
                         passthrough_report)
from tasks.errors import ConfigError
from tasks.shards import Shard
from tasks.tokenize import TokenizedData, tokenize_merge_task, tokenize_shard_task
from tasks.validate import ValidatedData, data_inputs, validate_input_task, validate_merge_task


class PreparedData(BaseModel):
    """What the training part of the flow needs from the data stages."""

    data: ValidatedData  # deduplicated train/test, replay, the validation reports and quarantine
    augmented: AugmentedData
    debiased: DebiasedData
    train: TokenizedData
    test: TokenizedData
    replay: TokenizedData | None
    seconds: dict[str, float]  # wall time of each stage (map + merge), for the logs and bench/data_throughput.py


def task_runner(cfg: RunnerConfig) -> TaskRunner:
    """The task runner ``runner.kind`` names."""
    if cfg.kind == "default":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    if cfg.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.address:
            return DaskTaskRunner(address=cfg.address)
        # One thread per worker process: the stages are pure-Python CPU work, which threads would serialize.
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": cfg.workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": None})
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ConfigError("runner.kind 'ray' needs prefect-ray (pip install prefect-ray)") from exc
    return RayTaskRunner(address=cfg.address) if cfg.address else RayTaskRunner(init_kwargs={"num_cpus": cfg.workers})


@flow(name="r1-data", flow_run_name="data stages -> {run}", log_prints=True)
def prepare_data(config: PipelineConfig, model_dir: str, run: str) -> PreparedData:
    """validate -> dedup -> augment -> debias -> tokenize, each a task map over shards plus a merge."""
    shard_rows, seconds = config.runner.shard_rows, {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    inputs = data_inputs(config.data)
    validated = validate_input_task.map(index=list(range(len(inputs))), split=[s for s, _ in inputs],
                                        path=[p for _, p in inputs], cfg=unmapped(config.data),
                                        shard_rows=unmapped(shard_rows), run_dir=unmapped(run))
    data = validate_merge_task(config.data, validated, run)
    lap("validate")

    if config.dedup.enabled:
        splits = {split: data.shards.get(split, []) for split in ("train", "test")}
        keys = {split: dedup_keys_task.map(shard=shards, index=list(range(len(shards))), split=unmapped(split),
                                           cfg=unmapped(config.dedup), run_dir=unmapped(run))
                for split, shards in splits.items()}
        plan = dedup_plan_task(keys["train"], keys["test"], config.dedup, run)
        parts = {split: dedup_write_task.map(shard=shards, plan_path=getattr(plan, split), split=unmapped(split),
                                             index=list(range(len(shards))), run_dir=unmapped(run))
                 for split, shards in splits.items()}
        data = dedup_merge_task(data, parts["train"], parts["test"], plan.report, run)
    else:
        data = dedup_merge_task(data, *passthrough_parts(data), passthrough_report(data, config.dedup), run)
    lap("dedup")

    shards = data.shards["train"]
    augmented = augment_merge_task(augment_shard_task.map(
        shard=shards, index=list(range(len(shards))), replay_path=unmapped(data.replay), cfg=unmapped(config.augment),
        run_dir=unmapped(run)), run)
    lap("augment")
    shards = augmented.shards
    debiased = debias_merge_task(debias_shard_task.map(
        shard=shards, index=list(range(len(shards))), cfg=unmapped(config.debias), run_dir=unmapped(run)),
        config.debias, run)
    lap("debias")

    def tokenize(shards: list[Shard], split: str):
        parts = tokenize_shard_task.map(shard=shards, index=list(range(len(shards))), model_dir=unmapped(model_dir),
                                        cfg=unmapped(config.tokenize), split=unmapped(split), run_dir=unmapped(run))
        return tokenize_merge_task.submit(parts, split, run)

    # The three splits' maps run side by side; each merge waits only for its own shards.
    merges = {split: tokenize(shards, split) for split, shards in
              (("train", debiased.shards), ("test", data.shards["test"]), ("replay", data.shards["replay"]))
              if split != "replay" or data.replay}
    train, test = merges["train"].result(), merges["test"].result()
    replay = merges["replay"].result() if "replay" in merges else None
    lap("tokenize")
    print(f"data stages: {seconds} s")
    return PreparedData(data=data, augmented=augmented, debiased=debiased, train=train, test=test, replay=replay,
                        seconds=seconds)


def run_data_stages(config: PipelineConfig, model_dir: str, run: str) -> PreparedData:
    """The data sub-flow on the task runner ``config.runner`` names."""
    return prepare_data.with_options(task_runner=task_runner(config.runner))(config, model_dir, run)
