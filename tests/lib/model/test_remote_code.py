"""Code shipped with a model never runs while ``model.trust_remote_code`` is off, even with "y" waiting on stdin.

transformers asks ``Do you wish to run the custom code? [y/N]`` on stdin whenever a loader is called without an
explicit ``trust_remote_code``; a "y" from a pipe (a CI job, a careless user) then runs the model's Python file. Each
test loads a hostile model folder in a child process whose stdin is a pipe full of "y" lines, and checks that the
file never ran and that the refusal names the setting.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT


def hostile_model(folder: Path, marker: Path, tokenizer, model_type: str = "evil_arch") -> Path:
    """A model folder whose config names an unknown ``model_type`` and maps every Auto class to ``evil.py``, which
    writes ``marker`` when it is imported. ``tokenizer``: the session's embedded tokenizer (building one takes longer
    than everything else here)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'a').write('ran\\n')\n"
        "from transformers import Qwen2Config, Qwen2ForCausalLM, PreTrainedTokenizerFast\n"
        f"class EvilConfig(Qwen2Config):\n    model_type = {model_type!r}\n"
        "class EvilModel(Qwen2ForCausalLM):\n    config_class = EvilConfig\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    )
    data = json.loads((folder / "config.json").read_text())
    data["model_type"] = model_type
    data["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(data))
    tok = json.loads((folder / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tok))
    return folder


# Every place the pipeline loads a model, a config or a tokenizer, as the stages call it.
LOADERS = {
    "is_prequantized": "from r1lib.model.loading import is_prequantized; is_prequantized(D, trust_remote_code=False)",
    "adaptable_module_names": "from r1lib.model.loading import adaptable_module_names; adaptable_module_names(D, CFG)",
    "load_causal_lm": "from r1lib.model.loading import load_causal_lm; load_causal_lm(D, CFG, four_bit=False)",
    "load_causal_lm_4bit": "from r1lib.model.loading import load_causal_lm; load_causal_lm(D, CFG, four_bit=True)",
    "load_tokenizer": "from r1lib.model.loading import load_tokenizer; load_tokenizer(D, trust_remote_code=False)",
    "resolve_model+targets": "from tasks.resolve_model import check_target_modules; "
    "check_target_modules(D, CFG, ['q_proj'])",
    "tokenize": "from tasks.tokenize import _load_tokenizer; _load_tokenizer(D, False)",
    "train(hf)": "from r1lib.training.backends import load_hf; from r1lib.config import TrainConfig; "
    "load_hf(D, CFG, TrainConfig())",
    "merge": "from tasks.export import merge; merge(D, D, CFG, OUT)",
    "smoke": "from r1lib.export.hf_reference import load_merged; load_merged(D, trust_remote_code=False)",
}
TOKENIZER_ONLY = {"load_tokenizer", "tokenize"}


def run_with_yes_on_stdin(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code],
        input="y\n" * 50,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


@pytest.mark.parametrize("model_type", ["evil_arch", "qwen2"])
@pytest.mark.slow  # every loader on a real model folder
def test_no_loader_runs_model_code_or_prompts_with_trust_remote_code_off(tmp_path, model_type, tokenizer):
    marker = tmp_path / "ran"
    model_dir = hostile_model(tmp_path / "model", marker, tokenizer, model_type)
    script = textwrap.dedent(
        f"""
        import json
        from r1lib.config import ModelConfig
        D = {str(model_dir)!r}
        OUT = {str(tmp_path / "out")!r}
        CFG = ModelConfig(name_or_path=D, allowed_roots=[{str(tmp_path)!r}], load_in_4bit=False)
        outcome = {{}}
        for name, code in {LOADERS!r}.items():
            try:
                exec(code)
                outcome[name] = "loaded"
            except BaseException as exc:
                outcome[name] = type(exc).__name__ + ": " + str(exc)
        print("OUTCOME " + json.dumps(outcome))
        """
    )
    proc = run_with_yes_on_stdin(script, tmp_path)
    assert "Do you wish to run the custom code" not in proc.stdout + proc.stderr, proc.stdout[-3000:]
    assert not marker.exists(), f"model code ran: {proc.stdout[-3000:]}"
    outcome = json.loads(proc.stdout.split("OUTCOME ", 1)[1])
    assert set(outcome) == set(LOADERS)
    if model_type == "qwen2":
        return  # a known architecture loads with its own classes: the auto_map entries are simply not used
    for name, result in outcome.items():
        if name in TOKENIZER_ONLY and result == "loaded":
            continue  # the tokenizer's class is a known one: its auto_map entry is simply not used
        assert result.startswith("RemoteCodeRefused: "), (name, result)
        assert "model.trust_remote_code" in result and str(model_dir) in result, (name, result)


def test_a_refusal_is_permanent_and_not_retried():
    from r1lib.errors import PermanentError, RemoteCodeRefused

    assert issubclass(RemoteCodeRefused, PermanentError)


@pytest.mark.slow  # every loader on a real model folder
def test_trusting_the_code_runs_it(tmp_path, tokenizer):
    """The switch works both ways: with model.trust_remote_code on, the model's own class is used."""
    marker = tmp_path / "ran"
    model_dir = hostile_model(tmp_path / "model", marker, tokenizer)
    script = (
        "from r1lib.config import ModelConfig; from r1lib.model.loading import load_causal_lm; "
        f"m = load_causal_lm({str(model_dir)!r}, ModelConfig(trust_remote_code=True), four_bit=False); "
        "print(type(m).__name__)"
    )
    proc = run_with_yes_on_stdin(script, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EvilModel" in proc.stdout and marker.exists()


SOURCES = ["r1lib", "tasks", "flows", "bench"]
LOADING_CALLS = {"from_pretrained", "from_config"}


def test_every_loading_call_in_the_project_passes_trust_remote_code_explicitly():
    """transformers prompts only when ``trust_remote_code`` is left out: no call of ours leaves it out."""
    missing = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOADING_CALLS
                    # peft is handed the loaded base model; it reads an adapter's config and tensors, never code
                    and ast.unparse(node.func.value) != "PeftModel"
                    and not any(k.arg == "trust_remote_code" for k in node.keywords)
                ):
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node.func)}")
    assert not missing, missing


@pytest.mark.slow  # every loader on a real model folder
def test_the_command_line_refuses_such_a_model_before_any_work_without_a_prompt(tmp_path, tokenizer):
    marker = tmp_path / "ran"
    model_dir = hostile_model(tmp_path / "model", marker, tokenizer)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.finetune",
            "--set",
            f"model.name_or_path={model_dir}",
            "--set",
            f'model.allowed_roots=["{tmp_path}"]',
        ],
        input="y\n" * 50,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists() and "Do you wish" not in proc.stdout + proc.stderr
    assert "configuration refused:" in proc.stderr and "model.trust_remote_code" in proc.stderr
    assert "Traceback" not in proc.stderr and "flow run" not in proc.stdout.lower()
