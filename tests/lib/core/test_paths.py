"""Paths stay under the configured roots: no '..', symlink, absolute-path or manifest escape; archives refused."""

import json
import os
from pathlib import Path

import pytest

from r1lib.config import DataConfig, ModelConfig, PipelineConfig
from r1lib.data.inputs import expand_inputs
from r1lib.errors import ConfigError, DataValidationError, PathNotAllowed, PermanentError
from r1lib.paths import PROJECT_DIR, confine, hf_cache_dir, resolve_roots
from r1lib.preflight import check_config, config_paths
from r1lib.presets import PRESETS, preset
from tasks.resolve_model import resolve_model
from tasks.validate import validate

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
    cfg = DataConfig(
        train_paths=[str(outside / "secret.jsonl")],
        test_path=str(root / "a.jsonl"),
        replay_path=None,
        allowed_roots=[str(root)],
    )
    with pytest.raises(PathNotAllowed) as info:
        validate(cfg, tmp_path / "out")
    assert isinstance(info.value, ConfigError) and isinstance(info.value, PermanentError)  # no Prefect retry
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec",
    [
        "data.zip",
        "data.tar",
        "data.tar.gz",
        "data.TGZ",
        "data.7z",
        "zip://train.jsonl::file:///nowhere/data.zip",
        "tar://train.jsonl::s3://b/x.tar",
        "s3://bucket/data.tar.gz",
    ],
)
def test_archives_are_refused_never_opened(tree, spec):
    root, _ = tree
    spec = spec if "://" in spec else str(root / spec)  # none of them exists: opening one would fail differently
    with pytest.raises(PathNotAllowed, match="archive"):
        expand_inputs(spec, [str(root), "s3://bucket/"])


def test_remote_urls_need_a_listed_prefix():
    roots = resolve_roots(["s3://my-bucket/", "memory://"])
    assert confine("s3://my-bucket/train/a.jsonl", roots, "data.allowed_roots") == "s3://my-bucket/train/a.jsonl"
    assert confine("memory://bench/a.jsonl", roots, "data.allowed_roots")
    for url in [
        "s3://my-bucket-2/a.jsonl",
        "gs://my-bucket/a.jsonl",
        "s3://my-bucket/../other/a.jsonl",
        "s3://my-bucket/%2e%2e/other/a.jsonl",
        "https://example.com/a.jsonl",
    ]:
        with pytest.raises(PathNotAllowed, match="data.allowed_roots"):
            confine(url, roots, "data.allowed_roots")


def test_roots_resolve_placeholders_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_roots(["{project}/data", ".", "{hf_cache}", "s3://b/"]) == [
        str(PROJECT_DIR / "data"),
        str(tmp_path.resolve()),
        os.path.realpath(hf_cache_dir()),
        "s3://b/",
    ]


def test_the_default_data_roots_keep_the_sample_data():
    assert DataConfig().allowed_roots == ["{project}/data", "."]
    assert expand_inputs("data/sample/train.jsonl") == ["data/sample/train.jsonl"]


# --- models -------------------------------------------------------------------------------------------------------


def _model_dir(path: Path, shards: dict[str, str] | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model-00001-of-00002.safetensors").write_bytes(b"")
    (path / "model-00002-of-00002.safetensors").write_bytes(b"")
    weight_map = shards or {
        "a.weight": "model-00001-of-00002.safetensors",
        "b.weight": "model-00002-of-00002.safetensors",
    }
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


@pytest.mark.parametrize(
    "entry", ["../outside/model.safetensors", "/etc/passwd", "sub/../../x.safetensors", "..\\x.safetensors"]
)
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
    for hub_id in [
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "unsloth/DeepSeek-R1-Distill-Llama-8B-unsloth-bnb-4bit",
        "org/name",
    ]:
        assert resolve_model(ModelConfig(name_or_path=hub_id, allowed_roots=[str(root)]), ".cache") == hub_id
    with pytest.raises(PathNotAllowed, match="archive"):
        resolve_model(_model(root / "model.tar.gz", root), ".cache")


# --- the other files the configuration names -----------------------------------------------------------------------


def _set(section: str, attr: str, prepend: list[str] | None = None, **extra):
    """A setter of one configured path (a list field gets [*prepend, path]), plus fields that make it read."""

    def apply(config: PipelineConfig, path: str) -> None:
        target = config
        for part in section.split("."):
            target = getattr(target, part)
        for name, value in extra.items():
            setattr(target, name, value)
        setattr(target, attr, path if prepend is None else [*prepend, path])

    return apply


CONFIG_PATHS = {
    "augment.templates_path": _set("augment", "templates_path"),
    "debias.blocklist_path": _set("debias", "blocklist_path"),
    "debias.term_pairs_path": _set("debias", "term_pairs_path"),
    "evaluate.lm_eval_path": _set("evaluate", "lm_eval_path", lm_eval_tasks=["arc_easy"]),
    "model.embedded.corpus_path": _set("model.embedded", "corpus_path"),
    "model.embedded.chat_paths[0]": _set("model.embedded", "chat_paths", []),
    "model.embedded.vocab_paths[1]": _set("model.embedded", "vocab_paths", ["data/sample/train.jsonl"]),
    "data.train_paths[1]": _set("data", "train_paths", ["data/sample/train.jsonl"]),
    "data.test_path": _set("data", "test_path"),
    "data.replay_path": _set("data", "replay_path"),
}


def _config_with(root: Path, field: str, path: str) -> PipelineConfig:
    """The tiny preset with one configured path replaced; the roots are ``root`` and the shipped data folder."""
    config = preset("tiny")
    config.data.allowed_roots = [str(root), "{project}/data"]
    CONFIG_PATHS[field](config, path)
    return config


@pytest.mark.parametrize("escape", ["absolute", "dot-dot", "symlink"])
@pytest.mark.parametrize("field", sorted(CONFIG_PATHS))
def test_a_configured_file_outside_the_data_roots_is_refused(tree, field, escape):
    root, outside = tree
    secret = outside / "secret.txt"
    secret.write_text("not for training\n")
    if escape == "symlink":
        (root / "link.txt").symlink_to(secret)
    path = {
        "absolute": str(secret),
        "dot-dot": str(root / ".." / "outside" / "secret.txt"),
        "symlink": str(root / "link.txt"),
    }[escape]
    config = _config_with(root, field, path)
    assert (field, path) in [(f, p) for f, p in config_paths(config)]
    with pytest.raises(PathNotAllowed) as info:
        check_config(config)
    message = str(info.value)  # names the field, the path, what it resolved to and the roots
    assert message.startswith(f"{field}: {path!r} resolves to '{secret}', outside data.allowed_roots")
    assert str(root) in message and str(PROJECT_DIR / "data") in message
    assert isinstance(info.value, ConfigError) and isinstance(info.value, PermanentError)  # no Prefect retry


@pytest.mark.parametrize("field", sorted(CONFIG_PATHS))
def test_a_configured_file_inside_the_data_roots_is_allowed(tree, field):
    root, _ = tree
    (root / "inner-link.jsonl").symlink_to(root / "a.jsonl")  # a link that stays inside is fine
    for path in [root / "a.jsonl", root / "sub" / ".." / "a.jsonl", root / "inner-link.jsonl"]:
        check_config(_config_with(root, field, str(path)))


def test_an_archive_named_by_the_configuration_is_refused(tree):
    root, _ = tree
    with pytest.raises(PathNotAllowed, match=r"^debias\.blocklist_path: .*is an archive"):
        check_config(_config_with(root, "debias.blocklist_path", str(root / "blocklist.tar.gz")))


def test_a_link_inside_the_lm_eval_folder_pointing_outside_is_refused(tree):
    root, outside = tree
    tasks = root / "lm_eval"
    (tasks / "arc").mkdir(parents=True)
    (tasks / "arc" / "arc.yaml").write_text("task: arc_easy\n")
    config = _config_with(root, "evaluate.lm_eval_path", str(tasks))
    check_config(config)
    (tasks / "arc" / "data.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(PathNotAllowed, match=rf"^evaluate\.lm_eval_path: .*data\.jsonl.* resolves to '{outside}"):
        check_config(config)


def test_files_that_are_not_read_are_not_checked(tree):
    root, outside = tree
    config = preset("tiny")
    config.data.allowed_roots = [str(root), "{project}/data"]
    config.debias.blocklist_path = config.debias.term_pairs_path = str(outside / "secret.jsonl")
    config.evaluate.lm_eval_path = str(outside / "dir")  # no lm_eval_tasks: never read
    config.model.embedded.corpus_path = str(outside / "secret.jsonl")
    config.model.name_or_path = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # not the embedded model
    config.debias.enabled = config.fairness.enabled = False  # the fairness check reads the term pairs too
    check_config(config)
    config.debias.enabled = True
    with pytest.raises(PathNotAllowed, match="^debias.blocklist_path: "):
        check_config(config)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_shipped_defaults_pass_with_the_default_roots(name, monkeypatch):
    monkeypatch.chdir(PROJECT_DIR)  # where scripts/demo runs the flow from
    config = preset(name)
    assert config.data.allowed_roots == ["{project}/data", "."]
    config.evaluate.lm_eval_tasks = ["arc_easy"]  # lm_eval_path stays None: nothing to check
    check_config(config)
    fields = {field for field, _ in config_paths(config)}
    assert {"augment.templates_path", "debias.blocklist_path", "debias.term_pairs_path"} <= fields
    assert ("model.embedded.corpus_path" in fields) == (name == "tiny")


def test_the_shipped_defaults_pass_with_only_the_project_data_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # "." no longer covers the checkout: {project}/data alone must hold every default
    config, at = preset("tiny"), lambda path: str(PROJECT_DIR / path)
    config.data.allowed_roots = ["{project}/data"]
    config.data.train_paths = [at(p) for p in config.data.train_paths]
    config.data.test_path, config.data.replay_path = at(config.data.test_path), at(config.data.replay_path)
    config.augment.templates_path = at(config.augment.templates_path)
    config.augment.more_templates_paths = [at(p) for p in config.augment.more_templates_paths]
    config.debias.blocklist_path = at(config.debias.blocklist_path)
    config.debias.term_pairs_path = at(config.debias.term_pairs_path)
    config.debias.protected_phrases_path = at(config.debias.protected_phrases_path)
    embedded = config.model.embedded
    embedded.corpus_path = at(embedded.corpus_path)
    embedded.chat_paths = [at(p) for p in embedded.chat_paths]
    embedded.vocab_paths = [at(p) for p in embedded.vocab_paths]
    check_config(config)
    config.augment.templates_path = at("README.md")  # in the checkout, not under data/
    with pytest.raises(PathNotAllowed, match="^augment.templates_path: "):
        check_config(config)


def test_the_flows_refuse_before_any_stage_runs(tree, tmp_path, monkeypatch):
    import flows.data
    import flows.finetune

    def no_stage(*args, **kwargs):
        raise AssertionError("a stage ran before the configured paths were checked")

    root, outside = tree
    config = _config_with(root, "augment.templates_path", str(outside / "secret.jsonl"))
    config.runs_dir = str(tmp_path / "runs")
    monkeypatch.setattr(flows.finetune, "resolve_model", no_stage)  # the flow's first stage
    with pytest.raises(PathNotAllowed, match="^augment.templates_path: "):
        flows.finetune.finetune.fn(config)
    monkeypatch.setattr(flows.data, "data_inputs", no_stage)  # the data stages on their own (r1-data, nightly)
    with pytest.raises(PathNotAllowed, match="^augment.templates_path: "):
        flows.data.prepare_data.fn(config, "embedded", str(tmp_path / "runs" / "x"))
    assert not (tmp_path / "runs").exists()
