"""The data stages write the same files, byte for byte, on Prefect's default task runner and on a Dask LocalCluster
of two worker processes; duplicates, near duplicates and test leaks are found across shard boundaries."""

import hashlib
import json
import random
from pathlib import Path

import pytest
from conftest import r1, write_lines
from prefect import flow

from r1lib.presets import preset

# The runs fixture: a throwaway Prefect server, two flow runs, a Dask cluster (~1.5 minutes on 2 cores).
slow = pytest.mark.slow

SHARD_ROWS = 400
WORDS = (
    "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau upsilon "
    "phi chi psi omega red green blue cyan magenta yellow black white"
).split()


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def shard_task_runs(name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        return client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=[name])))


@pytest.fixture(scope="module")
def runs(prefect_harness, tmp_path_factory):
    """The sample data plus planted rows whose twins lie in other shards, through both runners."""
    from flows.data import run_data_stages
    from tasks.resolve_model import resolve_model

    tmp = tmp_path_factory.mktemp("runners")
    rows = [json.loads(line) for line in open("data/sample/train.jsonl", encoding="utf-8")]
    rng = random.Random(0)
    long_ = " ".join(rng.choices(WORDS, k=80))
    planted = {
        "near": {"instruction": long_, "output": r1("Count them.", "80")},  # shard 0 ...
        "near_twin": {"instruction": long_ + " omega", "output": r1("Count them.", "80")},  # ... and shard 2
        "exact": {"instruction": "What is the sentence about? The cat sat.", "output": "animals"},  # shard 0 ...
        "exact_twin": {"instruction": "WHAT is the sentence about?  The cat sat.", "output": "animals"},  # ... shard 1
        "leak": {"instruction": " ".join(rng.choices(WORDS, k=60)), "output": "x"},  # shard 2, near a test row
    }
    rows.insert(5, planted["near"])
    rows.insert(7, planted["exact"])
    rows.insert(SHARD_ROWS + 10, planted["exact_twin"])
    rows.insert(2 * SHARD_ROWS + 20, planted["near_twin"])
    rows.insert(2 * SHARD_ROWS + 30, planted["leak"])
    write_lines(tmp / "train.jsonl", rows)
    test = [json.loads(line) for line in open("data/sample/test.jsonl", encoding="utf-8")]
    write_lines(tmp / "test.jsonl", test + [{**planted["leak"], "instruction": planted["leak"]["instruction"] + " pi"}])

    @flow
    def finetune_like(config, model_dir: str, run: str):  # as flows/finetune.py calls it: a sub-flow of its run
        return run_data_stages(config, model_dir, run)

    out = {"augment_0_runs_before": len(shard_task_runs("augment 0"))}  # the session's API also holds other tests' runs
    for kind in ("default", "dask", "inline"):
        config = preset("tiny")
        config.data.train_paths, config.data.test_path = [str(tmp / "train.jsonl")], str(tmp / "test.jsonl")
        config.data.allowed_roots = [str(tmp), "data"]
        config.augment.text_variants = ["question_first"]
        config.runner.kind = "default" if kind == "inline" else kind
        config.runner.workers, config.runner.shard_rows = 2, SHARD_ROWS
        run, model = tmp / kind, resolve_model(config.model, config.cache_dir)
        out[kind] = (run, (finetune_like if kind == "inline" else run_data_stages)(config, model, str(run)))
    return out


@slow
def test_dask_cluster_writes_the_default_runners_bytes(runs):
    (default_run, default), (dask_run, dask) = runs["default"], runs["dask"]
    expected = digests(default_run)
    assert len(expected) > 60 and any(name.endswith(".arrow") for name in expected)
    assert digests(dask_run) == expected
    assert digests(runs["inline"][0]) == expected  # a sub-flow inside a flow run, in waves of 2 shards
    # The Dask workers reported their task runs to this run's Prefect API (not to servers of their own).
    assert len(shard_task_runs("augment 0")) - runs["augment_0_runs_before"] == 3
    assert (dask.train.rows_out, dask.debiased.counterfactuals) == (
        default.train.rows_out,
        default.debiased.counterfactuals,
    )


@slow
def test_duplicates_across_shards_are_found(runs):
    run, prepared = runs["default"]
    assert len(prepared.deduped.shards["train"]) == 4  # 1205 rows in shards of 400
    quarantine = [json.loads(line) for line in open(run / "dedup" / "quarantine.jsonl", encoding="utf-8")]
    found = {(q["reason"], q["line"]): q["duplicate_of"]["line"] for q in quarantine}
    assert found[("near_duplicate", 2 * SHARD_ROWS + 21)] == 6  # shard 2 nearly repeats shard 0
    assert found[("duplicate", SHARD_ROWS + 11)] == 8  # shard 1 repeats shard 0 (case and spaces differ)
    leak = next(q for q in quarantine if q["reason"] == "test_leak" and q["line"] == 2 * SHARD_ROWS + 31)
    assert leak["duplicate_of"]["file"].endswith("test.jsonl")
    report = json.loads((run / "dedup" / "report.json").read_text())
    assert report["train_in"] == 1205 and report["train_out"] == 1205 - sum(q["split"] == "train" for q in quarantine)


@slow
def test_the_tokenized_dataset_loads_as_one(runs):
    from datasets import load_from_disk

    _, prepared = runs["dask"]
    dataset = load_from_disk(prepared.train.dataset)
    assert len(dataset) == prepared.train.rows_out and dataset.features["input_ids"].feature.dtype == "int32"
    assert sum(len(r) for r in dataset["input_ids"]) == prepared.train.tokens


def test_runner_section_picks_the_task_runner():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.data import task_runner
    from r1lib.config import RunnerConfig
    from r1lib.errors import ConfigError

    default = task_runner(RunnerConfig(workers=3))
    assert isinstance(default, ThreadPoolTaskRunner) and default._max_workers == 3
    local = task_runner(RunnerConfig(kind="dask", workers=2))
    assert isinstance(local, DaskTaskRunner) and local.cluster_kwargs["n_workers"] == 2
    assert task_runner(RunnerConfig(kind="dask", address="tcp://127.0.0.1:8786")).address == "tcp://127.0.0.1:8786"
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="prefect-ray"):
            task_runner(RunnerConfig(kind="ray"))
    # Where the stages run is not part of the run directory's name; how the data is cut is.
    config = preset("tiny")
    moved = config.model_copy(update={"runner": RunnerConfig(kind="dask", workers=8)})
    assert moved.run_dir() == config.run_dir()
    assert config.model_copy(update={"runner": RunnerConfig(shard_rows=10)}).run_dir() != config.run_dir()
