"""The stage policy (cache keys on inputs, code and input files; retries), the registry and the promotion decision.

Fast: no training. The transaction test runs a small flow on the session's throwaway Prefect API.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from prefect import flow, task
from pydantic import BaseModel

from r1lib.config import DataConfig
from r1lib.errors import ConfigError, DataValidationError
from r1lib.ops.registry import Registry
from r1lib.paths import InputPath, OutputPath, declared_paths
from r1lib.policy import STAGE_CACHE, inputs_fingerprint, path_fingerprint, retry_unless_permanent, stage_options
from tasks.promote import PromotionPolicy, data_fingerprint, decide, scan_drop


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def test_permanent_errors_are_not_retried():
    assert retry_unless_permanent(None, None, _State(DataValidationError("bad rows"))) is False
    assert retry_unless_permanent(None, None, _State(ConfigError("bad config"))) is False
    assert retry_unless_permanent(None, None, _State(OSError("disk hiccup"))) is True


def test_stage_options_cache_on_inputs_code_and_files_not_the_run():
    options = stage_options(retries=3, timeout_seconds=60)
    assert options["persist_result"] is True and options["cache_policy"] is STAGE_CACHE
    assert options["retries"] == 3 and options["timeout_seconds"] == 60 and options["retry_jitter_factor"] > 0
    delays = options["retry_delay_seconds"](3)  # exponential_backoff: retries -> delays
    assert delays[0] < delays[1] < delays[2]
    names = type(STAGE_CACHE.policy).__name__, sorted(type(p).__name__ for p in STAGE_CACHE.policy.policies)
    assert names == ("CompoundCachePolicy", ["InputFiles", "Inputs", "TaskSource"])  # no RunId
    assert stage_options(cache=False).get("cache_policy") is None


def test_file_fingerprint_follows_content_not_path_string(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"a": 1}\n')
    types = {"records_path": InputPath, "run_dir": OutputPath}
    before = inputs_fingerprint({"records_path": str(data), "run_dir": str(tmp_path)}, types)
    (tmp_path / "unrelated-output.txt").write_text("stages write into run_dir; that must not change the key")
    assert inputs_fingerprint({"records_path": str(data), "run_dir": str(tmp_path)}, types) == before
    data.write_text('{"a": 2}\n')
    assert inputs_fingerprint({"records_path": str(data), "run_dir": str(tmp_path)}, types) != before


def test_fingerprint_walks_models_and_directories(tmp_path):
    from r1lib.config import DataConfig

    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "part-0.arrow").write_bytes(b"x" * 10)
    cfg = DataConfig(train_paths=[str(folder / "part-0.arrow")], test_path=str(folder), replay_path=None)
    # data.allowed_roots names folders inputs may come from ("."): a permission, never hashed as content
    assert [(name, path) for name, path, _ in declared_paths(cfg, DataConfig, "cfg")] == [
        ("cfg.train_paths[0]", str(folder / "part-0.arrow")),
        ("cfg.test_path", str(folder)),
    ]
    types = {"cfg": DataConfig}
    assert inputs_fingerprint({"cfg": cfg}, types) == inputs_fingerprint(
        {"cfg": cfg.model_copy(update={"allowed_roots": ["/"]})}, types
    )
    first = path_fingerprint(folder)
    (folder / "part-0.arrow").write_bytes(b"y" * 10)
    assert path_fingerprint(folder) != first
    assert path_fingerprint(tmp_path / "missing") is None


@task(**stage_options(retries=0))
def read_first_line(cfg: DataConfig) -> str:
    READS.append(cfg.train_paths[0])
    return Path(cfg.train_paths[0]).read_text().splitlines()[0]


@flow
def read_training_file(name: str) -> str:
    return read_first_line(DataConfig(train_paths=[name], test_path="", replay_path=None))


READS: list[str] = []


def test_an_input_file_named_without_slash_or_dot_invalidates_the_cache(prefect_harness, tmp_path, monkeypatch):
    """A data file called ``traindata`` in the working directory is as much an input as ``data/x.jsonl``: when its
    content changes, a stage that reads it through the configuration runs again instead of coming from the cache."""
    monkeypatch.chdir(tmp_path)
    name = f"traindata{uuid.uuid4().hex}"  # no '/' or '.': a name, not a path string; new in every session
    Path(name).write_text("first\n")
    assert read_training_file(name) == "first" and read_training_file(name) == "first"
    assert READS.count(name) == 1  # unchanged: the second run came from the cache
    Path(name).write_text("second\n")
    assert read_training_file(name) == "second" and READS.count(name) == 2


class TrainedLike(BaseModel):
    adapter: InputPath  # what the next stage reads
    resumed_from: str  # a checkpoint the trainer rotates away: not an output anyone reads


def test_cached_result_with_vanished_outputs_is_not_reused(tmp_path):
    out = tmp_path / "out.txt"
    out.write_text("x")
    records: dict[str, object] = {}
    store = SimpleNamespace(exists=lambda key: key in records, read=lambda key: SimpleNamespace(result=records[key]))

    @task
    def stage(x: int) -> TrainedLike:
        return TrainedLike(adapter=str(out), resumed_from=str(tmp_path / "checkpoint-10"))

    ctx = SimpleNamespace(result_store=store, task=stage)
    key = STAGE_CACHE.compute_key(ctx, {"x": 1}, {})
    records[key] = stage.fn(1)
    assert STAGE_CACHE.compute_key(ctx, {"x": 1}, {}) == key  # the adapter is there (the checkpoint is not): reuse
    out.unlink()
    assert STAGE_CACHE.compute_key(ctx, {"x": 1}, {}) == f"{key}-g1"  # gone: recompute under a new key


def test_scan_drop_fingerprints_content(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / ".hidden.jsonl").write_text("ignored")
    files = scan_drop(str(tmp_path))
    assert [f.name for f in files] == ["a.jsonl"]
    fp = data_fingerprint(files)
    assert data_fingerprint(scan_drop(f"file://{tmp_path}")) == fp
    (tmp_path / "a.jsonl").write_text('{"x": 2}\n')
    assert data_fingerprint(scan_drop(str(tmp_path))) != fp
    with pytest.raises(ConfigError, match="nowhere' does not exist"):
        scan_drop(str(tmp_path / "nowhere"))  # a mistyped drop_url is no silent "nothing new"
    (tmp_path / "empty").mkdir()
    assert scan_drop(str(tmp_path / "empty")) == []


def test_decide_metric_direction_and_forgetting():
    policy = PromotionPolicy(metric="perplexity", forgetting_tolerance=0.05, max_forgetting_ratio=None)
    champion = {"perplexity": 3.0, "forgetting_ratio": 1.2}
    assert decide({"perplexity": 2.5, "forgetting_ratio": 1.2}, champion, policy)[0] is True
    assert decide({"perplexity": 3.5, "forgetting_ratio": 1.0}, champion, policy)[0] is False  # worse
    assert decide({"perplexity": 3.0, "forgetting_ratio": 1.0}, champion, policy)[0] is False  # a tie is not better
    promote, why = decide({"perplexity": 2.0, "forgetting_ratio": 1.5}, champion, policy)
    assert promote is False and "forgetting" in why
    accuracy = PromotionPolicy(metric="accuracy")
    assert decide({"accuracy": 0.6, "forgetting_ratio": None}, {"accuracy": 0.5}, accuracy)[0] is True
    # No champion yet: the challenger has to beat the base model it was tuned from.
    assert decide({"accuracy": 0.0, "base_accuracy": 0.0, "forgetting_ratio": 1.0}, None, accuracy)[0] is False
    assert decide({"accuracy": 0.3, "base_accuracy": 0.0, "forgetting_ratio": 1.4}, None, accuracy)[0] is True
    assert decide({"accuracy": 0.3, "base_accuracy": 0.0, "forgetting_ratio": 1.6}, None, accuracy)[0] is False


def _fake_outputs(tmp_path: Path, name: str) -> tuple[str, list[dict]]:
    adapter = tmp_path / name / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    gguf = tmp_path / name / f"{name}-Q8_0.gguf"
    gguf.write_bytes(b"GGUF")
    return str(adapter), [{"path": str(gguf), "type": "Q8_0", "bytes": 4}]


def test_registry_lineage_promotion_and_rollback(tmp_path):
    registry = Registry(tmp_path / "registry")
    entry = {
        "data_fingerprint": "d" * 64,
        "code_version": "abc",
        "metrics": {"accuracy": 0.5},
        "drop_files": [{"sha256": "1" * 64, "snapshot": "s1"}],
    }
    v1 = registry.add_version(entry, *_fake_outputs(tmp_path, "one"))
    assert v1.version == 1 and not v1.champion and Path(v1.adapter, "adapter_model.safetensors").exists()
    assert Path(v1.ggufs[0].path).read_bytes() == b"GGUF" and v1.ggufs[0].source.endswith("one-Q8_0.gguf")
    registry.set_champion(1)
    v2 = registry.add_version(
        {**entry, "drop_files": [{"sha256": "2" * 64, "snapshot": "s2"}]}, *_fake_outputs(tmp_path, "two")
    )
    assert registry.set_champion(2) == 1
    assert registry.champion().version == 2 and registry.get(1).status == "retired"
    assert registry.processed_files() == {"1" * 64, "2" * 64} and registry.accepted_data() == ["s1", "s2"]
    assert registry.rollback() == 1 and registry.champion().version == 1
    assert registry.get(2).status == "rolled-back"
    registry.remove_version(v2.version)
    assert [v.version for v in registry.versions()] == [1] and not (tmp_path / "registry/models/v2").exists()
    index = json.loads((tmp_path / "registry/index.json").read_text())
    assert index["champion"] == 1 and [v["champion"] for v in index["versions"]] == [True]
    assert not list((tmp_path / "registry").glob(".index.json.tmp-*"))  # atomic rename left nothing behind


def test_failed_release_smoke_test_rolls_back_the_promotion(prefect_harness, tmp_path):
    """Register + promote + smoke-test the registered GGUF in one transaction: a broken GGUF undoes all of it."""
    from prefect import flow
    from prefect.transactions import transaction

    from r1lib.config import EmbeddedModelConfig, SmokeConfig
    from r1lib.export.gguf import GGUFFile
    from r1lib.model.embedded import ensure_embedded_model
    from r1lib.model.generation import Decoding
    from r1lib.ops.registry import VersionEntry
    from tasks.promote import promote_task, register_task
    from tasks.smoke import smoke_task

    model_dir = str(ensure_embedded_model(EmbeddedModelConfig(), Path(".cache")))
    registry_dir = str(tmp_path / "registry")
    registry = Registry(registry_dir)
    champion = registry.add_version(
        {"data_fingerprint": "a" * 64, "code_version": "x"}, *_fake_outputs(tmp_path, "old")
    )
    registry.set_champion(champion.version)
    adapter, ggufs = _fake_outputs(tmp_path, "new")  # "GGUF" and nothing else: llama.cpp cannot load it

    @flow
    def release() -> None:
        with transaction() as txn:
            txn.set("registry_dir", registry_dir)
            entry = VersionEntry(data_fingerprint="b" * 64, code_version="x")
            record = register_task(registry_dir, entry, adapter, [GGUFFile(**g) for g in ggufs])
            txn.set("record", record)
            txn.set("previous_champion", champion.version)
            promote_task(registry_dir, record.version, "better")
            assert Registry(registry_dir).champion().version == record.version  # promoted, for a moment
            smoke_task(model_dir, [g.file() for g in record.ggufs], None, Decoding(), SmokeConfig(), str(tmp_path))

    with pytest.raises(Exception, match="llama-cpp-python exited|failed its smoke test"):
        release()
    after = Registry(registry_dir)
    assert after.champion().version == champion.version
    assert [v.version for v in after.versions()] == [champion.version]
    assert not (tmp_path / "registry/models/v2").exists()


def test_dataset_cache_files_do_not_change_the_fingerprint(tmp_path):
    """The train stage's ``datasets`` map/filter writes cache-*.arrow into the tokenized dataset's folder; a retry
    must still find train's cached result."""
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "data-00000-of-00001.arrow").write_bytes(b"rows")
    (folder / "state.json").write_text("{}")
    before = path_fingerprint(folder)
    (folder / "cache-871a41ced49762c4.arrow").write_bytes(b"derived")
    (folder / "tmpabc123").write_bytes(b"half-written")
    assert path_fingerprint(folder) == before


def test_a_rejected_challengers_data_is_held_not_trained_on_again(tmp_path):
    registry = Registry(tmp_path / "registry")
    entry = {"data_fingerprint": "d" * 64, "code_version": "abc", "metrics": {}}
    registry.add_version(
        {**entry, "drop_files": [{"sha256": "1" * 64, "snapshot": "s1"}]}, *_fake_outputs(tmp_path, "a")
    )
    registry.set_champion(1)
    registry.add_version(
        {**entry, "drop_files": [{"sha256": "2" * 64, "snapshot": "s2"}]}, *_fake_outputs(tmp_path, "b")
    )
    registry.set_status(2, "rejected", "accuracy fell")
    assert registry.accepted_data() == ["s1"]  # the rejected night's file is not in later training sets
    assert registry.processed_files() == {"1" * 64, "2" * 64}  # nor retried every night: held for review


class _SubResult(BaseModel):
    report: dict[str, int]
    paths: list[str]


@flow
def _sub_flow() -> _SubResult:
    return _SubResult(report={"rows": 3}, paths=["a", "b"])


@task
def _takes(report: dict, paths: list) -> int:
    return len(report) + len(paths)


@flow
def _parent_flow(forget: bool) -> str:
    from prefect.context import FlowRunContext

    from r1lib.compat import forget_sub_flow_results

    result = _sub_flow()
    if forget:
        forget_sub_flow_results()
    _takes(result.report, result.paths)
    return str(FlowRunContext.get().flow_run.id)


def test_a_task_taking_a_sub_flows_result_records_no_flow_run_input(prefect_harness):
    """Prefect 3.9.1's UI cannot parse a ``flow_run`` task input ("Invalid TaskInputResponse": an empty Task Runs
    tab); the flows drop the sub-flow's links (flows/data.py, flows/nightly.py), so none is recorded."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    def input_types(flow_run_id: str) -> set[str]:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {i.input_type for run in runs for inputs in run.task_inputs.values() for i in inputs}

    assert "flow_run" in input_types(_parent_flow(forget=False))  # what the UI choked on
    assert "flow_run" not in input_types(_parent_flow(forget=True))


def test_promotion_can_compare_held_out_preference_accuracy():
    policy = PromotionPolicy(metric="preference_accuracy")
    challenger = {"preference_accuracy": 0.9, "base_preference_accuracy": 0.5, "forgetting_ratio": 1.0}
    assert decide(challenger, None, policy)[0]  # beats the base model
    promote, why = decide(challenger, {"preference_accuracy": 0.95, "forgetting_ratio": 1.0}, policy)
    assert not promote and why.startswith("preference_accuracy 0.9 vs champion 0.95")
    assert decide({"accuracy": 0.5}, None, policy) == (False, "challenger has no preference_accuracy")
