"""The data stages as Prefect task maps over shards: validate -> dedup -> augment -> debias -> tokenize.

Each CPU-heavy stage is a map over shards (``runner.shard_rows`` records each, cut in input order) followed by a
small merge that joins the shards' outputs in shard order, so the files are the same, byte for byte, whichever task
runner ran the shards: Prefect's default thread pool, a Dask cluster (``runner.kind: dask``, prefect-dask) or Ray.
Dedup needs every row at once only for its decision: the keys (hashes, MinHash signatures) are mapped, one task
plans over all of them (duplicates, near duplicates and train/test leaks across shard boundaries), and the
survivors are written by a second map.

    runner.kind default   the shards run in threads of the flow's process, runner.workers at a time
    runner.kind dask      a temporary LocalCluster of runner.workers processes, or the cluster at runner.address
    runner.kind ray       a temporary local Ray, or the cluster at runner.address (needs prefect-ray)
"""

from __future__ import annotations

import time

from prefect import flow, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from r1lib.config import PipelineConfig, RunnerConfig
from r1lib.data.row_rules import RowRules
from r1lib.errors import ConfigError
from r1lib.ops.local_server import shared_server_url
from r1lib.preflight import preflight
from r1lib.stage import StageResult
from tasks.augment import AugmentedData, augment_merge_task, augment_shard_task
from tasks.debias import DebiasedData, debias_merge_task, debias_shard_task
from tasks.dedup import (
    DedupedData,
    dedup_keys_task,
    dedup_merge_task,
    dedup_plan_task,
    dedup_write_task,
    passthrough_parts,
    passthrough_report,
)
from tasks.tokenize import TokenizedData, tokenize_merge_task, tokenize_shard_task
from tasks.validate import ValidatedData, data_inputs, validate_input_task, validate_merge_task


class PreparedData(BaseModel):
    """What the data stages hand the rest of the flow."""

    validated: ValidatedData  # the validation reports and quarantine; replay records
    deduped: DedupedData  # train/test records, deduplicated and leak-free
    augmented: AugmentedData
    debiased: DebiasedData
    train: TokenizedData
    test: TokenizedData
    replay: TokenizedData | None
    seconds: dict[str, float]  # wall time of each stage (map + merge), for the logs and bench/data_throughput.py

    def results(self) -> list[StageResult]:
        """The stage results the run summary shows, in stage order (every split's tokenization: each may drop rows)."""
        splits = [self.train, self.test, *([self.replay] if self.replay else [])]
        return [self.validated, self.deduped, self.augmented, self.debiased, *splits]


def task_runner(cfg: RunnerConfig) -> TaskRunner:
    """The task runner ``runner.kind`` names."""
    if cfg.kind == "default":
        return ThreadPoolTaskRunner(max_workers=cfg.workers)
    if cfg.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if cfg.address:
            return DaskTaskRunner(address=cfg.address)
        # One thread per worker process: the stages are pure-Python CPU work, which threads would serialize.
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": cfg.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
                "env": {"PREFECT_API_URL": api_url()},
            },
        )
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ConfigError("runner.kind 'ray' needs prefect-ray (pip install prefect-ray)") from exc
    if cfg.address:
        return RayTaskRunner(address=cfg.address)
    return RayTaskRunner(
        init_kwargs={"num_cpus": cfg.workers, "runtime_env": {"env_vars": {"PREFECT_API_URL": api_url()}}}
    )


def api_url() -> str:
    """The Prefect API a local cluster's workers report to: without one each worker starts a temporary server of its
    own, and their task runs and artifacts never reach this run's. The configured API (the command line sets one for
    the run: r1lib/ops/local_server.py), else one local server for this process that dies with it."""
    return shared_server_url()


def _map(task, limit: int | None, **arguments):
    """``task.map(**arguments)``; with ``limit``, in waves of at most ``limit`` shards (results, not futures), so a
    thread pool without its own bound (the finetune flow's) holds only ``limit`` shards in memory at once."""
    if limit is None:
        return task.map(**arguments)
    mapped = {name: value for name, value in arguments.items() if not isinstance(value, unmapped)}
    results = []
    for lo in range(0, len(next(iter(mapped.values()))), limit):
        wave = {name: value[lo : lo + limit] if name in mapped else value for name, value in arguments.items()}
        results += task.map(**wave).result()
    return results


def data_stages(config: PipelineConfig, model_dir: str, run: str) -> PreparedData:
    """validate -> dedup -> augment -> debias -> tokenize, each a task map over shards plus a merge, submitted to the
    task runner of the flow this is called in. The caller has run the preflight (r1lib/preflight.py)."""
    shard_rows, seconds = config.runner.shard_rows, {}
    limit = config.runner.workers if config.runner.kind == "default" else None
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    def indices(items: list) -> list[int]:
        return list(range(len(items)))

    inputs = data_inputs(config.data)
    validated = _map(
        validate_input_task,
        limit,
        index=indices(inputs),
        split=[s for s, _ in inputs],
        path=[p for _, p in inputs],
        max_chars=unmapped(config.data.max_field_chars),
        max_line_bytes=unmapped(config.data.max_line_bytes),
        shard_rows=unmapped(shard_rows),
        run_dir=unmapped(run),
        rules=unmapped(RowRules.of(config.data)),
        allowed_roots=unmapped(config.data.allowed_roots),
    )
    validated = validate_merge_task(config.data, validated, run)
    lap("validate")

    splits = {split: validated.shards.get(split, []) for split in ("train", "test")}
    if config.dedup.enabled:
        keys = {
            split: _map(
                dedup_keys_task,
                limit,
                shard=shards,
                index=indices(shards),
                split=unmapped(split),
                cfg=unmapped(config.dedup),
                run_dir=unmapped(run),
            )
            for split, shards in splits.items()
        }
        plan = dedup_plan_task(keys["train"], keys["test"], config.dedup, run)
        parts = {
            split: _map(
                dedup_write_task,
                limit,
                shard=shards,
                plan_path=getattr(plan, split),
                split=unmapped(split),
                index=indices(shards),
                run_dir=unmapped(run),
            )
            for split, shards in splits.items()
        }
        deduped = dedup_merge_task(parts["train"], parts["test"], plan.report, run)
    else:
        deduped = dedup_merge_task(
            *passthrough_parts(splits["train"], splits["test"]),
            passthrough_report(splits["train"], splits["test"], config.dedup),
            run,
        )
    lap("dedup")

    shards = deduped.shards["train"]
    augmented = augment_merge_task(
        _map(
            augment_shard_task,
            limit,
            shard=shards,
            index=indices(shards),
            replay_path=unmapped(validated.replay),
            cfg=unmapped(config.augment),
            run_dir=unmapped(run),
        ),
        run,
    )
    lap("augment")
    shards = augmented.shards
    debiased = debias_merge_task(
        _map(
            debias_shard_task,
            limit,
            shard=shards,
            index=indices(shards),
            cfg=unmapped(config.debias),
            run_dir=unmapped(run),
        ),
        config.debias,
        run,
    )
    lap("debias")

    splits = {"train": debiased.shards, "test": deduped.shards["test"]} | (
        {"replay": validated.shards["replay"]} if validated.replay else {}
    )
    # Without a limit the splits' maps run side by side; each merge waits only for its own shards.
    parts = {
        split: _map(
            tokenize_shard_task,
            limit,
            shard=shards,
            index=indices(shards),
            model_dir=unmapped(model_dir),
            cfg=unmapped(config.tokenize),
            split=unmapped(split),
            run_dir=unmapped(run),
            trust_remote_code=unmapped(config.model.trust_remote_code),
        )
        for split, shards in splits.items()
    }
    merges = {
        split: tokenize_merge_task.submit(shard_parts, split, run, config.tokenize)
        for split, shard_parts in parts.items()
    }
    tokenized = {split: merge.result() for split, merge in merges.items()}
    lap("tokenize")
    print(f"data stages: {seconds} s")
    return PreparedData(
        validated=validated,
        deduped=deduped,
        augmented=augmented,
        debiased=debiased,
        train=tokenized["train"],
        test=tokenized["test"],
        replay=tokenized.get("replay"),
        seconds=seconds,
    )


@flow(name="r1-data", flow_run_name="data stages -> {run}", log_prints=True)
def prepare_data(config: PipelineConfig, model_dir: str, run: str) -> PreparedData:
    """The data stages as a flow of their own, on the task runner it is given."""
    preflight(config)  # a no-op inside the finetune flow, which ran it on this configuration already
    return data_stages(config, model_dir, run)


def run_data_stages(config: PipelineConfig, model_dir: str, run: str) -> PreparedData:
    """The data stages as the ``r1-data`` sub-flow, on the task runner ``config.runner`` names (``default``: Prefect's
    thread pool of ``runner.workers`` threads). Inside a flow run the sub-flow is one node of its run graph, which
    opens onto the shard maps, instead of a few dozen shard tasks stacked at the start of the graph."""
    return prepare_data.with_options(task_runner=task_runner(config.runner))(config, model_dir, run)
