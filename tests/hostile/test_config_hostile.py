"""Hostile configuration values beyond the ones tests/lib/core/test_config.py tries: each is refused on the command line
before any work (exit status 2, one line naming the field, no traceback), or, for a launch preset, when it is read.

The command line's ``finetune`` is replaced by a stub that records the call, so "accepted" means the flow would have
started.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

import flows.finetune as finetune_module

# (--set arguments, text the refusal must contain)
REFUSED = [
    (["runs_dir=runs\u0000x"], "runs_dir"),
    (["runs_dir= "], "runs_dir"),
    (["cache_dir=\n"], "cache_dir"),
    (['data.train_paths=[""]'], "data.train_paths.0"),
    (['data.train_paths=["data/x\\u0000.jsonl"]'], "data.train_paths.0"),
    (['data.train_paths=["data/sample/train.jsonl","data/sample/train.jsonl"]'], "data.train_paths"),
    (["model.name_or_path="], "model.name_or_path"),
    (["model.name_or_path=a\u0000b"], "model.name_or_path"),
    (["model.revision=main/../../../etc"], "model.revision"),
    (['train.lora.target_modules=["q_proj","q_proj"]'], "train.lora.target_modules"),
    (['train.lora.target_modules=["model"]'], "train.lora.target_modules ['model']: no such module"),
    (['train.lora.target_modules=["act_fn"]'], "train.lora.target_modules ['act_fn']: no such module"),
    (['export.quantizations=["Q8_0","Q8_0"]'], "export.quantizations"),
    (['augment.text_variants=["whitespace","whitespace"]'], "augment.text_variants"),
    (['evaluate.lm_eval_tasks=["a","a"]'], "evaluate.lm_eval_tasks"),
    (['smoke.prompts=[""]'], "smoke.prompts.0"),
    (["runner.address=http://evil.example:80"], "runner.address"),
    (["runner.address=tcp://host:1\nx"], "runner.address"),
    (["runner.workers=1024"], "runner.workers = 1024 local workers"),
    (["train.gpus=1024"], "train.gpus = 1024 processes"),
    (["train.launch=nonexistent"], "train.launch = 'nonexistent': no preset"),
    (["train.launch=ddp.yml"], "train.launch = 'ddp.yml': no preset"),
    (['train.max_steps={"a": 1, "a": 2}'], "appear twice"),
    (["train.max_steps=" + "[" * 100_000 + "]" * 100_000], "nested too deeply"),
    (["train.learning_rate=NaN"], "train.learning_rate"),
    (["train.learning_rate=-Infinity"], "train.learning_rate"),
    (["train.max_steps=1e3"], "train.max_steps"),
    (["train.epochs=true"], "train.epochs"),
    (["train.seed=true"], "train.seed"),
    (["run_name=abc\n"], "run_name"),
    (["run_name=" + "a" * 200], "run_name"),
]


@pytest.mark.parametrize(("sets", "needle"), REFUSED, ids=[repr(s)[:60] for s, _ in REFUSED])
def test_hostile_values_are_refused_before_any_work_naming_the_field(cli, sets, needle):
    argv = [arg for item in sets for arg in ("--set", item)]
    code, err, config = cli(*argv)
    started = config is not None
    assert (code, started) == (2, False), err
    assert err.startswith("configuration refused") and needle in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[]", "a JSON object of PipelineConfig fields is expected, not a list"),
        ('"tiny"', "not a str"),
        ('{"train": {"max_steps": 5, "max_steps": 5000000}}', "['max_steps'] appear twice"),
        ('{"train": {"learning_rate": NaN}}', "train.learning_rate: Input should be a finite number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("{" + " " * (2**20 + 10) + "}", "over 1 MiB"),
    ],
)
def test_hostile_config_files_are_refused_without_traceback(cli, tmp_path, content, needle):
    path = tmp_path / "config.json"
    path.write_text(content)
    code, err, config = cli("--config", str(path))
    started = config is not None
    assert (code, started) == (2, False) and needle in err and "Traceback" not in err, err


def test_values_that_are_choices_not_mistakes_are_accepted(cli, listener):
    """Some values look odd but are choices: no quantized GGUF, no forgetting limit, no test file, a subnormal but
    positive learning rate. They pass, so that the refusals above are not a blanket."""
    for sets in (
        ["export.quantizations=[]"],
        ["evaluate.max_forgetting_ratio=null"],
        ['data.test_path=""', "dedup.split_test_fraction=0.1"],
        ["train.learning_rate=1e-300"],
        ['train.lora.target_modules=["self_attn.q_proj","mlp.down_proj"]'],
        [f"runner.address=tcp://127.0.0.1:{listener.getsockname()[1]}", "runner.kind=dask"],
    ):
        code, err, config = cli(*[arg for item in sets for arg in ("--set", item)])
        started = config is not None
        assert started and code is None, (sets, err)


@pytest.fixture
def listener():
    """A cluster address that answers: a socket listening on a loopback port."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server


def write_preset(folder: Path, text: str) -> str:
    path = folder / "preset.yaml"
    path.write_text(text)
    return str(path)


HOSTILE_PRESETS = [
    ("launcher: torchrun\nenv:\n  LD_PRELOAD: /tmp/evil.so\n", "env block may not set ['LD_PRELOAD']"),
    ("env:\n  HF_ENDPOINT: https://attacker.example\n", "may not set ['HF_ENDPOINT']"),
    ("env:\n  NCCL_NET_PLUGIN: /tmp/evil.so\n", "may not set ['NCCL_NET_PLUGIN']"),
    ("env:\n  PYTHONPATH: /tmp/evil\n", "may not set ['PYTHONPATH']"),
    ("trainer:\n  report_to: [wandb]\n", "may not set ['report_to']"),
    ("trainer:\n  output_dir: /tmp/elsewhere\n", "may not set ['output_dir']"),
    ("trainer:\n  fsdp_config: /etc/passwd\n", "trainer.fsdp_config"),
    ("trainer:\n  dataloader_num_workers: 100000\n", "trainer.dataloader_num_workers"),
    ("trainer:\n  ddp_timeout: .inf\n", "trainer.ddp_timeout"),
    ("quant_storage: load\n", "quant_storage"),
    ("processes: 1000000000\n", "processes"),
    ("command: rm -rf /\n", "command: Extra inputs are not permitted"),
    ('env:\n  NCCL_DEBUG: "INFO\\nX=1"\n', "env.NCCL_DEBUG"),
    ("- a list\n", "a mapping of settings is expected"),
    ("a: &a [1]\nb: *a\n" + "#" * 70_000, "over 65536 bytes"),
]


@pytest.mark.parametrize(("text", "needle"), HOSTILE_PRESETS, ids=[t.split("\n")[0][:40] for t, _ in HOSTILE_PRESETS])
def test_a_hostile_launch_preset_is_refused_when_read(tmp_path, text, needle):
    from r1lib.config import TrainConfig
    from r1lib.errors import ConfigError
    from r1lib.training.launcher import launch_plan

    path = write_preset(tmp_path, text)
    with pytest.raises(ConfigError, match="launch preset") as refused:
        launch_plan(TrainConfig(launch=path), "hf")
    assert needle in str(refused.value), str(refused.value)


def test_a_hostile_launch_preset_under_the_roots_is_refused_before_any_work(cli, tmp_path, monkeypatch):
    """A preset file inside the data roots (here: the working directory) passes the roots check; its content is
    what refuses it, before the flow starts."""
    monkeypatch.chdir(tmp_path)
    for name in ("data", ".cache"):
        (tmp_path / name).symlink_to(Path(finetune_module.__file__).resolve().parent.parent / name)
    (tmp_path / "evil.yaml").write_text("launcher: in-process\ntrainer:\n  push_to_hub: true\n  hub_model_id: x/y\n")
    code, err, config = cli("--set", "train.launch=evil.yaml")
    started = config is not None
    assert (code, started) == (2, False), err
    assert "its trainer block may not set ['hub_model_id', 'push_to_hub']" in err


def test_the_shipped_launch_presets_pass_the_strict_reading():
    from r1lib.config import TrainConfig
    from r1lib.training.launcher import LAUNCH_DIR, load_launch_preset

    for path in sorted(LAUNCH_DIR.glob("*.yaml")):
        _, preset = load_launch_preset(TrainConfig(launch=path.stem))
        assert preset.launcher in ("in-process", "torchrun")


def test_a_partial_config_from_the_ui_names_an_unknown_preset_as_a_field_error():
    from pydantic import TypeAdapter, ValidationError

    with pytest.raises(ValidationError, match="unknown preset"):
        TypeAdapter(finetune_module.PresetConfig).validate_python({"preset": ["tiny"]})
    with pytest.raises(ValidationError, match="unknown preset"):
        TypeAdapter(finetune_module.PresetConfig).validate_python(json.loads('{"preset": "../tiny"}'))
