"""Which checkpoint a retry resumes from: the newest complete one that is whole and holds no pickle; a broken newest
checkpoint is named, set aside and the previous one used, instead of failing every rerun three times."""

from __future__ import annotations

import io
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from r1lib.training.checkpoints import COMPLETE_MARKER, last_complete_checkpoint, mark_complete


def checkpoint(root, step: int, states: bool = True):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    save_file({"lora_A": torch.ones(4, 2), "lora_B": torch.zeros(2, 4)}, str(path / "adapter_model.safetensors"))
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 10, "log_history": []}))
    if states:
        torch.save({"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}, path / "optimizer.pt")
        import numpy as np

        numpy_state = np.random.get_state()  # as the trainer saves it: numpy arrays and dtypes inside
        torch.save(
            {"python": 1, "numpy": numpy_state, "cpu": torch.zeros(2, dtype=torch.uint8)}, path / "rng_state.pth"
        )
    mark_complete(path, step)
    return path


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_newest_whole_checkpoint_is_used(tmp_path):
    checkpoint(tmp_path, 2)
    newest = checkpoint(tmp_path, 4)
    assert last_complete_checkpoint(tmp_path) == newest


def test_a_truncated_adapter_falls_back_to_the_previous_checkpoint(tmp_path, caplog):
    previous = checkpoint(tmp_path, 2)
    broken = checkpoint(tmp_path, 4)
    data = (broken / "adapter_model.safetensors").read_bytes()
    (broken / "adapter_model.safetensors").write_bytes(data[: len(data) - 10])
    assert last_complete_checkpoint(tmp_path) == previous
    assert (tmp_path / "broken-checkpoint-4").exists() and not broken.exists()
    assert "adapter_model.safetensors is truncated" in caplog.text and "checkpoint-4" in caplog.text


@pytest.mark.parametrize("name", ["optimizer.pt", "rng_state.pth", "scheduler.pt"])
def test_a_pickle_state_never_runs_and_the_previous_checkpoint_is_used(tmp_path, name):
    marker = tmp_path / "ran"
    previous = checkpoint(tmp_path, 2)
    hostile = checkpoint(tmp_path, 4)
    buffer = io.BytesIO()
    torch.save(Exploit(marker), buffer)  # a torch zip file whose data.pkl runs os.system when unpickled
    (hostile / name).write_bytes(buffer.getvalue())
    assert last_complete_checkpoint(tmp_path) == previous
    assert not marker.exists()


@pytest.mark.parametrize(
    "plant",
    [
        lambda p: (p / "adapter_model.bin").write_bytes(pickle.dumps({"w": 1})),
        lambda p: (p / "adapter_model.safetensors").write_bytes(pickle.dumps({"w": 1})),  # pickle renamed
        lambda p: (p / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {}})),
        lambda p: (p / "optimizer.pt").write_bytes(b"PK\x03\x04 truncated"),
    ],
    ids=["pickle-bin", "pickle-renamed", "empty-index", "unreadable-optimizer"],
)
def test_a_checkpoint_that_is_not_whole_or_holds_pickle_is_set_aside(tmp_path, plant):
    previous = checkpoint(tmp_path, 2)
    plant(checkpoint(tmp_path, 4))
    assert last_complete_checkpoint(tmp_path) == previous


def test_distributed_metadata_is_read_only_as_written_in_an_fsdp_run(tmp_path):
    fsdp = tmp_path / "checkpoint-6"
    (fsdp / "pytorch_model_fsdp_0").mkdir(parents=True)
    (fsdp / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps({"planner": "as written"}))
    (fsdp / "trainer_state.json").write_text(json.dumps({"global_step": 6, "max_steps": 10}))
    mark_complete(fsdp, 6)
    assert last_complete_checkpoint(tmp_path, distributed=True) == fsdp
    (fsdp / "pytorch_model_fsdp_0" / ".metadata").write_bytes(pickle.dumps({"planner": "replaced"}))
    assert last_complete_checkpoint(tmp_path, distributed=True) is None  # replaced after the run wrote it
    again = tmp_path / "checkpoint-8"
    (again / "pytorch_model_fsdp_0").mkdir(parents=True)
    (again / "pytorch_model_fsdp_0" / ".metadata").write_bytes(b"x")
    (again / "trainer_state.json").write_text(json.dumps({"global_step": 8, "max_steps": 10}))
    mark_complete(again, 8)
    assert last_complete_checkpoint(tmp_path, distributed=False) is None  # never in a one-process run


def test_incomplete_checkpoints_are_ignored_and_removed(tmp_path):
    complete = checkpoint(tmp_path, 4)
    (tmp_path / "checkpoint-8").mkdir()  # the process died while writing this one
    (tmp_path / "checkpoint-8" / "optimizer.pt").write_bytes(b"half")
    assert not (tmp_path / "checkpoint-8" / COMPLETE_MARKER).exists()
    assert last_complete_checkpoint(tmp_path) == complete
    assert not (tmp_path / "checkpoint-8").exists()
