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
