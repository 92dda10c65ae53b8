"""The MLflow model registry as the registry's second home, against a real ``mlflow server`` (tests/conftest.py):
a promotion registers the version with its lineage and moves the ``champion`` alias, an unchanged night (the real
nightly flow) changes nothing, a worse challenger is rejected and stays visible with its reason, and a rolled-back
registration or promotion is undone there too.

The promotion steps are driven through the functions the nightly's transaction calls (``decide``, the register and
promote tasks' own functions, ``Registry.set_status`` for a rejection): the same code path as flows/nightly.py, without
training three challengers."""

from __future__ import annotations

import json

import pytest

METRICS = {"accuracy": 0.6, "perplexity": 2.0, "format_ok": 1.0, "forgetting_ratio": 1.1, "base_accuracy": 0.1}


def trained(tmp_path, name: str):
    """A challenger's adapter folder and one GGUF file, as a finetune run leaves them."""
    from r1lib.export.gguf import GGUFFile

    adapter = tmp_path / name / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    gguf = tmp_path / name / f"{name}-Q8_0.gguf"
    gguf.write_bytes(b"GGUF" + name.encode())
    return str(adapter), [GGUFFile(path=str(gguf), type="Q8_0", bytes=gguf.stat().st_size)]


def entry(metrics: dict, fingerprint: str):
    from r1lib.ops.registry import VersionEntry

    return VersionEntry(
        data_fingerprint=fingerprint,
        code_version="abc123",
        train_paths=["data/sample/train.jsonl", f"registry/data/{fingerprint[:12]}-drop.jsonl"],
        config_fingerprint="cfg" + fingerprint[:8],
        metrics=metrics,
        run_dir=f"runs/nightly-{fingerprint[:6]}",
        flow_run_id="00000000-0000-0000-0000-000000000001",
    )


def night(registry, tmp_path, name, metrics, fingerprint):
    """What flows/nightly.py does after training: decide against the champion, register, promote or reject."""
    from tasks.promote import PromotionPolicy, decide, promote_task, register_task

    champion = registry.champion()
    promote, reason = decide(metrics, champion.metrics if champion else None, PromotionPolicy())
    adapter, ggufs = trained(tmp_path, name)
    record = register_task.fn(str(registry.root), entry(metrics, fingerprint).model_copy(update={"decision": reason}),
                              adapter, ggufs)  # fmt: skip
    if promote:
        promote_task.fn(str(registry.root), record.version, reason)
    else:
        registry.set_status(record.version, "rejected", reason)
    return record, promote, reason


@pytest.mark.server
def test_promotion_unchanged_night_and_rejection_are_visible_in_the_mlflow_registry(
    mlflow_server, prefect_harness, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from flows.nightly import nightly
    from r1lib.config import RegistryConfig
    from r1lib.ops.registry import Registry
    from r1lib.presets import preset

    name = "r1-nightly-test"
    registry = Registry(tmp_path / "registry")
    registry.attach("mlflow", mlflow_server, name)
    client = MlflowClient(mlflow_server, mlflow_server)

    # Night 1: no champion, the challenger beats the base model: promoted, the alias on it, its lineage in tags.
    first, promoted, _ = night(registry, tmp_path, "v1", METRICS, "a" * 64)
    assert promoted
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.tags["r1.version"] == str(first.version) and champion.tags["status"] == "champion"
    assert champion.tags["data_fingerprint"] == "a" * 64 and champion.tags["code_version"] == "abc123"
    assert json.loads(champion.tags["train_paths"])[0] == "data/sample/train.jsonl"
    assert champion.tags["flow_run_id"].endswith("0001") and "beats base model" in champion.tags["reason"]
    assert sorted(a.path for a in client.list_artifacts(champion.run_id, "model")) == [
        "model/adapter",
        "model/v1-Q8_0.gguf",
    ]
    assert client.get_run(champion.run_id).data.metrics["accuracy"] == 0.6
    assert registry.champion().version == first.version  # the nightly reads the champion from the alias
    # What serves it (README.md: MLFLOW_TRACKING_URI=... mlflow artifacts download -u models:/<name>@champion).
    import mlflow.artifacts

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the registry too, as for the command line
    served = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@champion", dst_path=str(tmp_path / "s"))
    assert (tmp_path / "s" / "v1-Q8_0.gguf").read_bytes() == b"GGUFv1" and served

    # Night 2: the drop holds only files already trained on: the real nightly flow stops before training.
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "old.jsonl").write_text('{"instruction": "x", "output": "y"}\n')
    from r1lib.io import sha256_file
    from r1lib.ops.registry import DropSnapshot

    seen = DropSnapshot(sha256=sha256_file(drop / "old.jsonl"), snapshot="x", name="old.jsonl")
    with registry.update() as index:
        index["versions"][0]["drop_files"] = [seen.model_dump()]
    config = preset("tiny").model_copy(update={"registry": RegistryConfig(backend="mlflow", uri=mlflow_server,
                                                                         model_name=name)})  # fmt: skip
    unchanged = nightly(str(drop), str(registry.root), config)
    assert unchanged.status == "no-new-data"
    assert [v.version for v in client.search_model_versions(f"name = '{name}'")] == [champion.version]

    # Night 3: a worse challenger: rejected, visible with its reason; the alias stays on the champion.
    worse = {**METRICS, "accuracy": 0.4}
    second, promoted, reason = night(registry, tmp_path, "v2", worse, "b" * 64)
    assert not promoted and "not better" in reason
    rejected = next(v for v in client.search_model_versions(f"name = '{name}'") if v.tags["r1.version"] == "2")
    assert rejected.tags["status"] == "rejected" and rejected.tags["reason"] == reason
    assert client.get_model_version_by_alias(name, "champion").version == champion.version

    # Night 4: a better one: the alias moves, the old champion is retired.
    third, promoted, _ = night(registry, tmp_path, "v3", {**METRICS, "accuracy": 0.9}, "c" * 64)
    assert promoted
    moved = client.get_model_version_by_alias(name, "champion")
    assert moved.tags["r1.version"] == str(third.version)
    assert client.get_model_version(name, champion.version).tags["status"] == "retired"

    # A rollback re-promotes the earlier champion in MLflow too; a rolled-back registration is deleted there.
    assert registry.rollback() == first.version
    assert client.get_model_version_by_alias(name, "champion").tags["r1.version"] == str(first.version)
    registry.remove_version(third.version)
    assert sorted(v.tags["r1.version"] for v in client.search_model_versions(f"name = '{name}'")) == ["1", "2"]


def test_a_folder_registry_is_left_untouched_and_mlflow_needs_an_address(tmp_path):
    from r1lib.errors import ConfigError
    from r1lib.ops.registry import Registry

    registry = Registry(tmp_path / "registry")
    registry.attach("folder")
    assert not registry.root.exists() and registry.mirror is None
    with pytest.raises(ConfigError, match="registry.uri"):
        registry.attach("mlflow", None)
