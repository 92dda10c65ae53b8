import pytest
from pydantic import ValidationError

from r1lib.config import PipelineConfig
from r1lib.presets import PRESETS, config_from_args, preset


def test_every_preset_validates_and_names_a_real_model():
    names = {name: preset(name).model.name_or_path for name in PRESETS}
    assert names["tiny"] == "embedded"
    assert names["r1-llama-8b"] == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B"
    assert names["r1-llama-8b-unsloth-4bit"] == "unsloth/DeepSeek-R1-Distill-Llama-8B-unsloth-bnb-4bit"
    assert {
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
    } <= set(names.values())


def test_unknown_keys_and_bad_values_are_refused():
    with pytest.raises(ValidationError, match="extra"):
        PipelineConfig.model_validate({"trian": {}})
    with pytest.raises(ValidationError, match="learning_rate"):
        PipelineConfig.model_validate({"train": {"learning_rate": -1}})
    with pytest.raises(ValidationError, match="truncation"):
        PipelineConfig.model_validate({"tokenize": {"truncation": "maybe"}})


def test_cli_overrides():
    cfg = config_from_args(
        [
            "--preset",
            "tiny",
            "--set",
            "train.max_steps=7",
            "--set",
            "run_name=demo",
            "--set",
            'data.train_paths=["a.jsonl", "b.jsonl"]',
        ]
    )
    assert (cfg.train.max_steps, cfg.run_name, cfg.data.train_paths) == (7, "demo", ["a.jsonl", "b.jsonl"])


def test_trust_remote_code_is_off_by_default():
    assert all(not preset(name).model.trust_remote_code for name in PRESETS)


def test_flow_parameter_schema_renders_the_config():
    from prefect.utilities.callables import parameter_schema

    from flows.finetune import finetune

    schema = parameter_schema(finetune.fn).model_dump()
    assert "config" in schema["properties"]
    assert "PipelineConfig" in str(schema["definitions"])


# The values a hostile or careless user tried, each accepted before: every one is refused, naming its field.
BAD_VALUES = [
    ("train.learning_rate", float("inf")),
    ("train.learning_rate", True),
    ("model.trust_remote_code", "yes"),
    ("train.max_steps", -5),
    ("train.max_steps", 0),
    ("train.max_steps", 10**12),
    ("train.max_steps", 20.0),
    ("train.lora.target_modules", []),
    ("train.lora.target_modules", ["q_proj; import os"]),
    ("tokenize.max_seq_length", 10**10),
    ("run_name", "/etc/evil"),
    ("run_name", "../outside"),
    ("run_name", ".."),
    ("runs_dir", ""),
    ("cache_dir", ""),
    ("data.train_paths", []),
    ("train.launch", "../../tmp/evil"),
    ("train.epochs", float("nan")),
    ("evaluate.temperature", "0.7"),
    ("data.max_rejected_fraction", "0.5"),
    ("train.seed", -1),
    ("preset", "tiny/../x"),
]


@pytest.mark.parametrize(("field", "value"), BAD_VALUES, ids=[f"{f}={v!r}" for f, v in BAD_VALUES])
def test_bad_values_are_refused_naming_the_field(field, value):
    data = preset("tiny").model_dump()
    node, *parents, leaf = [data, *field.split(".")]
    for part in parents:
        node = node[part]
    if leaf not in node:
        pytest.skip(f"{field} is not a field")
    node[leaf] = value
    with pytest.raises(ValidationError) as info:
        PipelineConfig.model_validate(data)
    assert leaf in str(info.value) or field.split(".")[0] in str(info.value)


def test_cli_refuses_before_any_work_in_one_line_per_field_without_traceback(capsys):
    from flows.finetune import main

    assert main(["--set", "bogus.x=1"]) == 2
    err = capsys.readouterr().err
    assert "--set bogus.x: the configuration has no field 'bogus' (known: " in err and "Traceback" not in err
    assert main(["--set", "train.learning_rate=Infinity", "--set", "model.trust_remote_code=yes"]) == 2
    err = capsys.readouterr().err
    assert "train.learning_rate: Input should be a finite number" in err
    assert "model.trust_remote_code: Input should be a valid boolean (got 'yes')" in err
    assert main(["--set", "train.nope=1"]) == 2
    assert "train has no field 'nope'" in capsys.readouterr().err


def test_a_launch_preset_may_not_upload_or_move_outputs(tmp_path):
    from r1lib.config import TrainConfig
    from r1lib.errors import ConfigError
    from r1lib.training.launcher import launch_plan

    evil = tmp_path / "evil.yaml"
    evil.write_text("launcher: in-process\ntrainer:\n  push_to_hub: true\n  hub_model_id: someone/stolen\n")
    with pytest.raises(ConfigError, match=r"may not set \['hub_model_id', 'push_to_hub'\]"):
        launch_plan(TrainConfig(launch=str(evil)), "hf")


def test_a_launch_preset_file_must_lie_under_the_data_roots(tmp_path):
    from r1lib.errors import PathNotAllowed
    from r1lib.preflight import check_config

    outside = tmp_path / "preset.yaml"
    outside.write_text("launcher: in-process\n")
    config = preset("tiny")
    config.train.launch = str(outside)
    with pytest.raises(PathNotAllowed, match="^train.launch: "):
        check_config(config)


def test_a_lora_target_the_model_lacks_is_refused_before_any_work():
    from r1lib.errors import ConfigError
    from tasks.resolve_model import check_target_modules, resolve_model

    config = preset("tiny")
    model_dir = resolve_model(config.model, config.cache_dir)
    check_target_modules(model_dir, config.model, config.train.lora.target_modules)
    with pytest.raises(ConfigError, match=r"target_modules \['wq'\]: no such module .*'q_proj'"):
        check_target_modules(model_dir, config.model, ["q_proj", "wq"])
