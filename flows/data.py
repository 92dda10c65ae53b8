"""The data stages as Prefect task maps over shards: validate -> dedup -> the data filters -> tokenize.

The data filters are the stages r1lib/stages.py declares with ``filter=True`` (augment, debias), in that order: each
maps ``tasks/<name>.py``'s ``<name>_shard_task`` over the previous one's training shards and joins the parts with its
``<name>_merge_task``. A new filter is its module, its configuration section and its line there; nothing here.

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

import importlib
import time

from prefect import Task, flow, unmapped
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel

from r1lib.compat import forget_sub_flow_results
from r1lib.config import DataConfig, DedupConfig, PipelineConfig, RunnerConfig
from r1lib.data.holdout import HeldOutSource, held_out_configs
from r1lib.data.preference_tokens import UNPAIRED_COLUMNS
from r1lib.data.row_rules import RowRules
from r1lib.errors import ConfigError
from r1lib.ops.local_server import shared_server_url
from r1lib.preflight import preflight
from r1lib.stage import StageResult
from r1lib.stages import DATA_FILTERS, FilterContext, HeldOut, folders
from r1lib.training.methods import METHODS
from tasks.augment import AugmentedData
from tasks.debias import DebiasedData
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

    validated: ValidatedData  # the validation reports and quarantine; replay records; the data fingerprint
    deduped: DedupedData  # train/test records, deduplicated and leak-free
    filtered: dict[str, StageResult]  # each data filter's result (augment, debias, ...), in the declared order
    train: TokenizedData
    test: TokenizedData
    replay: TokenizedData | None
    seconds: dict[str, float]  # wall time of each stage (map + merge), for the logs and bench/data_throughput.py

    @property
    def augmented(self) -> AugmentedData:
        return self.filtered["augment"]

    @property
    def debiased(self) -> DebiasedData:
        return self.filtered["debias"]

    def held_out(self) -> HeldOut:
        """The held-out set a candidate model is scored on (evaluate, fairness, the nightly's champion)."""
        return HeldOut(
            records=self.deduped.test,
            dataset=self.test.dataset,
            replay=self.replay.dataset if self.replay else None,
            pairs=self.test.preference.dataset,
            pairs_from="a stable hash split of the training pairs (dedup.preference_test_fraction)"
            if self.deduped.report.held_out_pairs
            else "the test file",
        )

    def training_sets(self) -> tuple[str, str | None]:
        """(train, eval) datasets the train stage fits on: the preference rows in a preference run (its training
        split holds no other), else the SFT rows."""
        if self.train.preference.dataset:
            return self.train.preference.dataset, self.test.preference.dataset
        return self.train.dataset, self.test.dataset

    def preference_replay(self) -> str | None:
        """The general replay rows a preference method adds the SFT loss of (``train.replay_weight``): the SFT rows of
        a preference run's training split (augment's replay; it holds no other); None in an SFT run."""
        return self.train.dataset if self.train.preference.dataset else None

    def results(self) -> list[StageResult]:
        """The stage results the run summary shows, in stage order (every split's tokenization: each may drop rows)."""
        splits = [self.train, self.test, *([self.replay] if self.replay else [])]
        return [self.validated, self.deduped, *self.filtered.values(), *splits]


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


def filter_tasks(name: str) -> tuple[Task, Task]:
    """A data filter's two tasks, ``<name>_shard_task`` and ``<name>_merge_task`` of its module ``tasks/<name>.py``:
    the shard task maps ``(shard, index, cfg, context, out_dir)`` to a part, the merge joins the parts
    ``(parts, cfg, out_dir)`` into a result with the filtered training ``shards``."""
    key = name.replace("-", "_")
    module = importlib.import_module(f"tasks.{key}")
    return getattr(module, f"{key}_shard_task"), getattr(module, f"{key}_merge_task")


def data_stages(config: PipelineConfig, model_dir: str, run: str) -> PreparedData:
    """validate -> dedup -> the data filters (augment, debias, ...) -> tokenize, each a task map over shards plus a
    merge, submitted to the task runner of the flow this is called in. The caller has run the preflight
    (r1lib/preflight.py)."""
    shard_rows, seconds, out = config.runner.shard_rows, {}, folders(run)
    limit = config.runner.workers if config.runner.kind == "default" else None
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()

    def indices(items: list) -> list[int]:
        return list(range(len(items)))

    # The user's data is scored on the user's rows: a test file of theirs, or a stable split (r1lib/data/holdout.py).
    data_cfg, dedup_cfg, source = held_out_configs(config.data, config.dedup)
    inputs = data_inputs(data_cfg)
    rules, layout = preference_rules(config, data_cfg)
    validated = _map(
        validate_input_task,
        limit,
        index=indices(inputs),
        split=[s for s, _ in inputs],
        path=[p for _, p in inputs],
        max_chars=unmapped(config.data.max_field_chars),
        max_line_bytes=unmapped(config.data.max_line_bytes),
        shard_rows=unmapped(shard_rows),
        out_dir=unmapped(out["validate"]),
        rules=unmapped(rules),
        allowed_roots=unmapped(data_cfg.allowed_roots),
    )
    validated = validate_merge_task(data_cfg, validated, out["validate"])
    lap("validate")

    deduped = dedup(validated, dedup_cfg, out["dedup"], limit, source)
    lap("dedup")

    shards, filtered = deduped.shards["train"], {}
    context = FilterContext(replay=validated.replay)
    for stage in DATA_FILTERS:  # each filter maps over the previous one's training shards
        shard_task, merge_task = filter_tasks(stage.name)
        cfg = getattr(config, stage.section)
        parts = _map(
            shard_task,
            limit,
            shard=shards,
            index=indices(shards),
            cfg=unmapped(cfg),
            context=unmapped(context),
            out_dir=unmapped(out[stage.name]),
        )
        filtered[stage.name] = merge_task(parts, cfg, out[stage.name])
        shards = filtered[stage.name].shards
        lap(stage.name)

    splits = {"train": shards, "test": deduped.shards["test"]} | (
        {"replay": validated.shards["replay"]} if validated.replay else {}
    )
    # Without a limit the splits' maps run side by side; each merge waits only for its own shards.
    parts = {
        split: _map(
            tokenize_shard_task,
            limit,
            shard=split_shards,
            index=indices(split_shards),
            model_dir=unmapped(model_dir),
            cfg=unmapped(config.tokenize),
            split=unmapped(split),
            out_dir=unmapped(out["tokenize"]),
            trust_remote_code=unmapped(config.model.trust_remote_code),
            layout=unmapped(layout if split == "train" else "pairs"),
        )
        for split, split_shards in splits.items()
    }
    merges = {
        split: tokenize_merge_task.submit(shard_parts, split, out["tokenize"], config.tokenize)
        for split, shard_parts in parts.items()
    }
    tokenized = {split: merge.result() for split, merge in merges.items()}
    lap("tokenize")
    print(f"data stages: {seconds} s")
    return PreparedData(
        validated=validated,
        deduped=deduped,
        filtered=filtered,
        train=tokenized["train"],
        test=tokenized["test"],
        replay=tokenized.get("replay"),
        seconds=seconds,
    )


def preference_rules(config: PipelineConfig, data_cfg: DataConfig) -> tuple[RowRules, str]:
    """The validate stage's row rules (the data section's, and the preference rows train.method trains on) and the
    layout of the training split's preference rows (KTO: unpaired; held-out rows are always pairs)."""
    method = METHODS[config.train.method]
    if method.consumes != "preference":
        return RowRules.of(data_cfg), "pairs"
    unpaired = method.columns == UNPAIRED_COLUMNS
    kinds = ("pair", "label") if unpaired else ("pair",)
    rules = RowRules.of(data_cfg).model_copy(update={"preference_method": method.name, "preference_kinds": kinds})
    return rules, "unpaired" if unpaired else "pairs"


def dedup(
    validated: ValidatedData, cfg: DedupConfig, out_dir: str, limit: int | None, held_out: HeldOutSource | None = None
) -> DedupedData:
    """Keys mapped over the shards, one plan over all of them, the survivors written by a second map. ``held_out``:
    where the test rows come from (the summary says it)."""
    splits = {split: validated.shards.get(split, []) for split in ("train", "test")}
    if not cfg.enabled:
        parts = passthrough_parts(splits["train"], splits["test"])
        return dedup_merge_task(*parts, passthrough_report(splits["train"], splits["test"], cfg), out_dir, held_out)
    keys = {
        split: _map(
            dedup_keys_task,
            limit,
            shard=shards,
            index=list(range(len(shards))),
            split=unmapped(split),
            cfg=unmapped(cfg),
            out_dir=unmapped(out_dir),
        )
        for split, shards in splits.items()
    }
    plan = dedup_plan_task(keys["train"], keys["test"], cfg, out_dir)
    parts = {
        split: _map(
            dedup_write_task,
            limit,
            shard=shards,
            plan_path=getattr(plan, split),
            split=unmapped(split),
            index=list(range(len(shards))),
            out_dir=unmapped(out_dir),
        )
        for split, shards in splits.items()
    }
    return dedup_merge_task(parts["train"], parts["test"], plan.report, out_dir, held_out)


@flow(name="r1-data", flow_run_name="data stages -> {run}", log_prints=True)
def prepare_data(config: PipelineConfig, model_dir: str, run: str) -> PreparedData:
    """The data stages as a flow of their own, on the task runner it is given."""
    preflight(config)  # a no-op inside the finetune flow, which ran it on this configuration already
    return data_stages(config, model_dir, run)


def run_data_stages(config: PipelineConfig, model_dir: str, run: str) -> PreparedData:
    """The data stages as the ``r1-data`` sub-flow, on the task runner ``config.runner`` names (``default``: Prefect's
    thread pool of ``runner.workers`` threads). Inside a flow run the sub-flow is one node of its run graph, which
    opens onto the shard maps, instead of a few dozen shard tasks stacked at the start of the graph.

    Prefect's links from the sub-flow's result to its run are dropped (``forget_sub_flow_results``): a task taking
    them would be recorded with a ``flow_run`` input, which Prefect 3.9.1's UI cannot parse (an empty Task Runs tab)."""
    prepared = prepare_data.with_options(task_runner=task_runner(config.runner))(config, model_dir, run)
    forget_sub_flow_results()
    return prepared
