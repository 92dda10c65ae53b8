"""What the pipeline refuses to run or read: pickled weights, remote code, templates that reach outside the sandbox."""

import json

import pytest


def tiny_qwen(path, safe: bool):
    path.mkdir(parents=True, exist_ok=True)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    if not safe:  # a pickle checkpoint, as older or hostile uploads ship it (loading it can run arbitrary code)
        torch.save(model.state_dict(), path / "pytorch_model.bin")
        (path / "model.safetensors").unlink()
    return path


def test_pickled_weights_are_refused(tmp_path):
    from r1lib.config import ModelConfig
    from r1lib.errors import UnsafeWeights
    from r1lib.model.loading import load_causal_lm

    model_dir = tiny_qwen(tmp_path / "pickled", safe=False)
    assert (model_dir / "pytorch_model.bin").exists() and not (model_dir / "model.safetensors").exists()
    with pytest.raises(UnsafeWeights, match="safetensors"):
        load_causal_lm(str(model_dir), ModelConfig(name_or_path=str(model_dir)), four_bit=False)


def test_safetensors_weights_load(tmp_path):
    from r1lib.config import ModelConfig
    from r1lib.model.loading import load_causal_lm

    model_dir = tiny_qwen(tmp_path / "safe", safe=True)
    model = load_causal_lm(str(model_dir), ModelConfig(name_or_path=str(model_dir)), four_bit=False)
    assert model.config.model_type == "qwen2"


def test_remote_code_in_a_model_directory_does_not_run(tmp_path):
    from r1lib.config import ModelConfig
    from r1lib.model.loading import load_causal_lm

    model_dir = tiny_qwen(tmp_path / "remote", safe=True)
    marker = tmp_path / "pwned"
    (model_dir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import Qwen2ForCausalLM as EvilModel\n"
    )
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    try:
        load_causal_lm(str(model_dir), ModelConfig(name_or_path=str(model_dir)), four_bit=False)
    except ValueError as exc:  # transformers refuses custom code without trust_remote_code
        assert "trust_remote_code" in str(exc)
    assert not marker.exists()


@pytest.mark.parametrize(
    "template",
    [
        "{{ cycler.__init__.__globals__.os.environ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{% for m in messages %}{{ m.__class__.__init__.__globals__ }}{% endfor %}",
        "{{ self.__init__.__globals__.__builtins__.open('/etc/hostname').read() }}",
    ],
)
def test_a_hostile_chat_template_cannot_reach_files_or_the_environment(tokenizer, template, monkeypatch):
    import copy

    from jinja2.exceptions import SecurityError, UndefinedError

    monkeypatch.setenv("HF_TOKEN", "hf_planted_secret_do_not_leak")
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = template
    try:
        text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    except (SecurityError, UndefinedError, TypeError):
        return
    assert "hf_planted_secret" not in text and "/bin" not in text


def test_model_names_that_are_neither_a_directory_nor_a_hub_id_are_refused(tmp_path):
    from r1lib.config import ModelConfig
    from r1lib.errors import ConfigError
    from tasks.resolve_model import resolve_model

    for name in ["../../etc", "/definitely/not/here", "not a hub id", "org/name/extra"]:
        with pytest.raises(ConfigError):
            resolve_model(ModelConfig(name_or_path=name), str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        resolve_model(ModelConfig(name_or_path=str(tmp_path / "empty"), allowed_roots=[str(tmp_path)]), str(tmp_path))


class _Marker:
    """Unpickling this creates ``path``: evidence that a pickle ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.path,))


def _adapter(folder, case: str, marker):
    import pickle

    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    (folder / "training_args.bin").write_bytes(b"the trainer's record, never read")
    weights = {"base_model.model.a.lora_A.weight": torch.ones(2, 4)}
    if case == "pickle_bin":
        (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Marker(marker)))
    elif case == "pickle_renamed":
        (folder / "adapter_model.safetensors").write_bytes(pickle.dumps(_Marker(marker)))
    elif case == "bin_beside_safetensors":
        save_file(weights, folder / "adapter_model.safetensors")
        (folder / "adapter_model.bin").write_bytes(pickle.dumps(_Marker(marker)))
    elif case == "truncated":
        save_file(weights, folder / "adapter_model.safetensors")
        blob = (folder / "adapter_model.safetensors").read_bytes()
        (folder / "adapter_model.safetensors").write_bytes(blob[:-8])
    else:
        save_file(weights, folder / "adapter_model.safetensors")
    return folder


@pytest.mark.parametrize(
    "case, needle",
    [
        ("pickle_bin", r"pickle files \['adapter_model.bin'\]"),
        ("pickle_renamed", "a pickle renamed .safetensors"),
        ("bin_beside_safetensors", r"pickle files \['adapter_model.bin'\]"),
        ("truncated", "is truncated"),
    ],
)
def test_an_adapter_folder_with_pickles_or_broken_weights_is_refused_up_front(tmp_path, case, needle):
    """Evaluate, fairness, merge and the nightly's champion load adapters through load_adapter: a pickle or broken
    adapter is a permanent UnsafeWeights naming the file (no retries of a raw error), and nothing is unpickled."""
    from r1lib.errors import UnsafeWeights
    from r1lib.model.loading import check_adapter

    folder = _adapter(tmp_path / "adapter", case, tmp_path / "ran")
    with pytest.raises(UnsafeWeights, match=needle) as refused:
        check_adapter(str(folder))
    assert str(folder) in str(refused.value) and not (tmp_path / "ran").exists()


def test_a_whole_safetensors_adapter_passes_the_check(tmp_path):
    from r1lib.model.loading import check_adapter

    check_adapter(str(_adapter(tmp_path / "adapter", "whole", tmp_path / "ran")))
