"""Paths stay under the configured roots: no '..', symlink, absolute-path or manifest escape; archives refused."""

import json
import os
from pathlib import Path

import pytest

from tasks.config import DataConfig, ModelConfig
from tasks.errors import ConfigError, DataValidationError, PathNotAllowed, PermanentError
from tasks.model import resolve_model
from tasks.paths import PROJECT_DIR, confine, hf_cache_dir, resolve_roots
from tasks.validate import expand_inputs, validate

ROW = json.dumps({"instruction": "What is the sentence about?", "output": "Animals."}) + "\n"


@pytest.fixture
def tree(tmp_path):
    """root/ (allowed) with data and links; outside/ (not allowed) with a secret file and folder."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    (outside / "dir").mkdir(parents=True)
    (root / "a.jsonl").write_text(ROW)
    (root / "sub" / "b.jsonl").write_text(ROW)
    (outside / "secret.jsonl").write_text(ROW)
    (outside / "dir" / "c.jsonl").write_text(ROW)
    return root, outside


def test_data_inside_the_roots_is_allowed(tree):
    root, _ = tree
    (root / "inner-link.jsonl").symlink_to(root / "a.jsonl")  # a link that stays inside is fine
    assert expand_inputs(str(root / "a.jsonl"), [str(root)]) == [str(root / "a.jsonl")]
    assert [Path(p).name for p in expand_inputs(str(root), [str(root)])] == ["a.jsonl", "inner-link.jsonl", "b.jsonl"]
    assert len(expand_inputs(str(root / "**" / "*.jsonl"), [str(root)])) == 3


@pytest.mark.parametrize("spec", ["root/../outside/secret.jsonl", "root/sub/../../outside/secret.jsonl"])
def test_dot_dot_escape_is_refused(tree, spec):
    root, outside = tree
    with pytest.raises(PathNotAllowed) as info:
        expand_inputs(str(root.parent / spec), [str(root)])
    message = str(info.value)  # names the path, what it resolved to and the roots
    assert spec in message and f"resolves to '{outside / 'secret.jsonl'}'" in message and str(root) in message


def test_absolute_path_outside_is_refused(tree):
    root, outside = tree
    with pytest.raises(PathNotAllowed, match="outside data.allowed_roots"):
        expand_inputs(str(outside / "secret.jsonl"), [str(root)])


def test_symlinked_file_pointing_outside_is_refused(tree):
    root, outside = tree
    (root / "link.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(PathNotAllowed, match=f"resolves to '{outside / 'secret.jsonl'}'"):
        expand_inputs(str(root / "link.jsonl"), [str(root)])
    with pytest.raises(PathNotAllowed, match="link.jsonl"):  # found by a folder expansion: refused as well
        expand_inputs(str(root), [str(root)])


def test_symlinked_folder_pointing_outside_is_refused(tree):
    root, outside = tree
    (root / "linked").symlink_to(outside / "dir", target_is_directory=True)
    for spec in [root / "linked", root / "linked" / "c.jsonl", root / "linked" / "*.jsonl"]:
        with pytest.raises(PathNotAllowed, match=f"resolves to '{outside / 'dir'}"):
            expand_inputs(str(spec), [str(root)])
    # Folder and glob expansion (fsspec) do not enter linked folders at all, so nothing outside is found.
    assert [Path(p).name for p in expand_inputs(str(root), [str(root)])] == ["a.jsonl", "b.jsonl"]
    with pytest.raises(DataValidationError, match="no data file"):
        expand_inputs(str(root / "*" / "c.jsonl"), [str(root)])


def test_validate_refuses_before_reading_and_does_not_retry(tree, tmp_path):
    root, outside = tree
    cfg = DataConfig(train_paths=[str(outside / "secret.jsonl")], test_path=str(root / "a.jsonl"), replay_path=None,
                     allowed_roots=[str(root)])
    with pytest.raises(PathNotAllowed) as info:
        validate(cfg, tmp_path / "out")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, PermanentError)  # no Prefect retry
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["data.zip", "data.tar", "data.tar.gz", "data.TGZ", "data.7z",
                                  "zip://train.jsonl::file:///nowhere/data.zip", "tar://train.jsonl::s3://b/x.tar",
                                  "s3://bucket/data.tar.gz"])
def test_archives_are_refused_never_opened(tree, spec):
    root, _ = tree
    spec = spec if "://" in spec else str(root / spec)  # none of them exists: opening one would fail differently
    with pytest.raises(PathNotAllowed, match="archive"):
        expand_inputs(spec, [str(root), "s3://bucket/"])


def test_remote_urls_need_a_listed_prefix():
    roots = resolve_roots(["s3://my-bucket/", "memory://"])
    assert confine("s3://my-bucket/train/a.jsonl", roots, "data.allowed_roots") == "s3://my-bucket/train/a.jsonl"
    assert confine("memory://bench/a.jsonl", roots, "data.allowed_roots")
    for url in ["s3://my-bucket-2/a.jsonl", "gs://my-bucket/a.jsonl", "s3://my-bucket/../other/a.jsonl",
                "s3://my-bucket/%2e%2e/other/a.jsonl", "https://example.com/a.jsonl"]:
        with pytest.raises(PathNotAllowed, match="data.allowed_roots"):
            confine(url, roots, "data.allowed_roots")


def test_roots_resolve_placeholders_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_roots(["{project}/data", ".", "{hf_cache}", "s3://b/"]) == [
        str(PROJECT_DIR / "data"), str(tmp_path.resolve()), os.path.realpath(hf_cache_dir()), "s3://b/"]


def test_the_default_data_roots_keep_the_sample_data():
    assert DataConfig().allowed_roots == ["{project}/data", "."]
    assert expand_inputs("data/sample/train.jsonl") == ["data/sample/train.jsonl"]


# --- models -------------------------------------------------------------------------------------------------------


def _model_dir(path: Path, shards: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model-00001-of-00002.safetensors").write_bytes(b"")
    (path / "model-00002-of-00002.safetensors").write_bytes(b"")
    weight_map = shards or {"a.weight": "model-00001-of-00002.safetensors",
                            "b.weight": "model-00002-of-00002.safetensors"}
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def _model(path: Path, root: Path) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), allowed_roots=[str(root)])


def test_model_directory_inside_the_roots_resolves(tree):
    root, _ = tree
    model = _model_dir(root / "model")
    assert resolve_model(_model(model, root), ".cache") == str(model)


def test_model_directory_outside_the_roots_is_refused(tree):
    root, outside = tree
    model = _model_dir(outside / "model")
    with pytest.raises(PathNotAllowed, match="outside model.allowed_roots"):
        resolve_model(_model(model, root), ".cache")
    (root / "model").symlink_to(model, target_is_directory=True)  # a link inside the root to it
    with pytest.raises(PathNotAllowed, match=f"resolves to '{model}'"):
        resolve_model(_model(root / "model", root), ".cache")
    with pytest.raises(PathNotAllowed):  # and up out of the root
        resolve_model(_model(root / ".." / "outside" / "model", root), ".cache")


@pytest.mark.parametrize("entry", ["../outside/model.safetensors", "/etc/passwd", "sub/../../x.safetensors",
                                   "..\\x.safetensors"])
def test_manifest_entry_leaving_the_model_directory_is_refused(tree, entry):
    root, _ = tree
    model = _model_dir(root / "model", {"a.weight": "model-00001-of-00002.safetensors", "b.weight": entry})
    with pytest.raises(PathNotAllowed, match=r"model\.safetensors\.index\.json: weight_map entry"):
        resolve_model(_model(model, root), ".cache")


def test_symlinks_inside_a_model_directory_pointing_outside_are_refused(tree):
    root, outside = tree
    (outside / "weights.safetensors").write_bytes(b"")
    model = _model_dir(root / "model")
    shard = model / "model-00002-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(outside / "weights.safetensors")  # named by the index, links out
    with pytest.raises(PathNotAllowed, match="weights.safetensors"):
        resolve_model(_model(model, root), ".cache")
    shard.unlink()
    shard.write_bytes(b"")
    (model / "original").symlink_to(outside / "dir", target_is_directory=True)  # a linked subfolder
    with pytest.raises(PathNotAllowed, match="original"):
        resolve_model(_model(model, root), ".cache")


def test_hf_cache_style_links_inside_the_roots_are_fine(tree):
    root, _ = tree
    blobs = root / "hub" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "abc").write_bytes(b"")
    model = _model_dir(root / "hub" / "snapshots" / "rev")
    shard = model / "model-00001-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(Path("../../blobs/abc"))  # how huggingface_hub lays out its cache
    assert resolve_model(_model(model, root / "hub"), ".cache") == str(model)


def test_a_hub_id_is_not_a_path_and_resolves_as_before(tree):
    root, _ = tree
    for hub_id in ["deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", "unsloth/DeepSeek-R1-Distill-Llama-8B-unsloth-bnb-4bit",
                   "org/name"]:
        assert resolve_model(ModelConfig(name_or_path=hub_id, allowed_roots=[str(root)]), ".cache") == hub_id
    with pytest.raises(PathNotAllowed, match="archive"):
        resolve_model(_model(root / "model.tar.gz", root), ".cache")
