"""Hostile configuration of our own making: a launch preset that is a YAML alias bomb (a few hundred bytes that
stand for 10^9 values) used to take the command line over a minute and 5 GB, then die with a MemoryError traceback.
It is refused at once, in one line, with exit status 2."""

import contextlib
import resource
import time

import pytest

import flows.finetune as finetune_module

BOMB = (
    'a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]\n'
    + "".join(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))
    + "env:\n  NCCL_DEBUG: *a8\nlauncher: in-process\n"
)


@contextlib.contextmanager
def bounded(gib: int = 8, seconds: float = 10):
    """Address space capped (a bomb fails fast instead of swapping the machine), and a time limit checked after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = gib * 2**30 if hard == resource.RLIM_INFINITY else min(hard, gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    start = time.monotonic()
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
    assert time.monotonic() - start < seconds


def test_a_yaml_alias_bomb_in_a_launch_preset_is_refused_at_once(tmp_path):
    from r1lib.config import TrainConfig
    from r1lib.errors import ConfigError
    from r1lib.training.launcher import launch_plan

    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 1000
    with bounded(), pytest.raises(ConfigError, match=r"aliases \(\*name\) are not allowed in a launch preset"):
        launch_plan(TrainConfig(launch=str(path)), "hf")


def test_the_cli_refuses_the_bomb_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    started = []
    monkeypatch.setattr(finetune_module, "finetune", lambda config: started.append(config))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bomb.yaml").write_text(BOMB)
    with bounded():
        code = finetune_module.main(["--set", "train.launch=bomb.yaml"])
    err = capsys.readouterr().err
    assert (code, started) == (2, []), err
    assert err.startswith("configuration refused") and "aliases (*name) are not allowed" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "name", ["https://evil.example/model", "no/such/model/dir", "./missing-model", "org/name with space"]
)
def test_a_model_name_that_is_neither_a_folder_nor_a_hub_id_is_refused_before_any_work(
    tmp_path, monkeypatch, capsys, name
):
    """Before: the command line accepted it, started the Prefect server and the flow, and the resolve-model stage
    failed with a traceback, exit status 1."""
    started = []
    monkeypatch.setattr(finetune_module, "finetune", lambda config: started.append(config))
    code = finetune_module.main(["--set", f"model.name_or_path={name}"])
    err = capsys.readouterr().err
    assert (code, started) == (2, []), err
    assert err.startswith("configuration refused") and "Traceback" not in err
    assert "neither a local model directory nor a hub id" in err or "not under a URL prefix" in err


def test_a_hub_id_still_passes_the_command_line(monkeypatch, capsys):
    started = []
    monkeypatch.setattr(finetune_module, "finetune", lambda config: started.append(config))
    with contextlib.suppress(AttributeError):  # the stub returns no result to print: the flow would have run
        finetune_module.main(["--set", "model.name_or_path=deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"])
    assert started, capsys.readouterr().err
