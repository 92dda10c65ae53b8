"""Faults injected on purpose: a training process killed with SIGKILL, a disk that fills up mid-write.

The trainings are the session's (tests/conftest.py), shared with test_resume_accounting.py: the clean
12-step run, the same run killed after checkpoint-8 and resumed, and the rerun after the final checkpoint."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
from r1lib.config import TrainConfig
from r1lib.presets import preset
from tasks.resolve_model import resolve_model
from tasks.train import train
cfg = preset("tiny")
train_cfg = TrainConfig(**{**cfg.train.model_dump(), "max_steps": 12, "save_steps": 4, "logging_steps": 5,
                           "micro_batch_size": 8, "learning_rate": 3e-3})
model_dir = resolve_model(cfg.model, cfg.cache_dir)
result = train(sys.argv[1], None, model_dir, cfg.model, train_cfg, cfg.tokenize, Path(sys.argv[2]))
print("RESULT " + result.model_dump_json())
"""


def start_training(dataset: str, out_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", TRAIN_SCRIPT, dataset, str(out_dir)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def final_loss(result: dict) -> float:
    history = json.loads(Path(result["log_history"]).read_text())
    return [h["loss"] for h in history if "loss" in h][-1]


@pytest.mark.slow
def test_sigkill_mid_training_resumes_from_the_last_complete_checkpoint(clean_training, killed_and_resumed):
    uninterrupted, resumed = clean_training["result"], killed_and_resumed["resumed"]
    assert not killed_and_resumed["adapter_after_kill"]
    assert resumed["resumed_from"] and resumed["resumed_from"].split("checkpoint-")[-1] in ("4", "8")
    assert resumed["steps"] == uninterrupted["steps"] == 12
    assert abs(final_loss(resumed) - final_loss(uninterrupted)) < 0.05 * final_loss(uninterrupted)
    assert (killed_and_resumed["dir"] / "adapter" / "adapter_model.safetensors").exists()


def test_disk_full_during_gguf_conversion_leaves_nothing_and_a_retry_succeeds(tmp_path, monkeypatch):
    """The converter dies with ENOSPC after writing part of the file; the stage fails clearly, no GGUF is left."""
    import tasks.export as export
    from r1lib.errors import DiskFull

    merged = tmp_path / "merged"
    merged.mkdir()
    target = tmp_path / "model-F16.gguf"

    def full_disk(cmd, **kwargs):
        outfile = Path(cmd[cmd.index("--outfile") + 1])
        outfile.write_bytes(b"GGUF" + b"\0" * 1000)  # a partial file under the temporary name
        return subprocess.CompletedProcess(cmd, 1, "", f"OSError: [Errno {errno.ENOSPC}] No space left on device")

    monkeypatch.setattr(export.subprocess, "run", full_disk)
    with pytest.raises(DiskFull, match="No space left on device writing .*model-F16.gguf"):
        export.convert(str(merged), "f16", target)
    assert list(tmp_path.glob("*.gguf")) == [] and list(tmp_path.glob(".*tmp*")) == []

    def converter_ok(cmd, **kwargs):  # after the disk was cleared: a complete (tiny) GGUF
        import gguf
        import numpy as np

        writer = gguf.GGUFWriter(cmd[cmd.index("--outfile") + 1], "llama")
        writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(export.subprocess, "run", converter_ok)
    result = export.convert(str(merged), "f16", target)
    assert target.exists() and result.bytes == target.stat().st_size > 0
    assert list(tmp_path.glob(".*tmp*")) == []


def test_disk_full_while_saving_the_adapter_keeps_no_half_adapter(tmp_path):
    from r1lib.io import atomic_dir

    target = tmp_path / "adapter"
    with pytest.raises(OSError, match="No space left"):
        with atomic_dir(target) as tmp:
            (tmp / "adapter_model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_trainings_on_one_run_directory_do_not_interleave(clean_training):
    """While the session's clean training (a child process) ran, a second training on its run directory was started
    in this process (conftest.py: clean_training): it was refused, and the first run was not disturbed."""
    from r1lib.io import DirectoryBusy

    refused = clean_training["second_training"]
    assert isinstance(refused, DirectoryBusy), repr(refused)
    assert f"is in use by pid {clean_training['pid']}" in str(refused)
    result = clean_training["result"]
    assert result["steps"] == 12 and result["resumed_from"] is None  # the first run was not disturbed


@pytest.mark.slow
def test_rerun_after_the_final_checkpoint_publishes_it_without_training_past_max_steps(rerun_after_final_checkpoint):
    """The task died after the trainer saved checkpoint-<max_steps> but before the adapter was published (or the same
    training ran again on a kept work folder). 120 rows at 8 a step: 15 steps an epoch, so max_steps=6 ends mid-epoch,
    where transformers' resume would run one more step (the epoch loop trains before it checks for the end)."""
    from safetensors.torch import load_file

    run = rerun_after_final_checkpoint
    first, again, out = run["first"], run["again"], run["dir"]
    assert first.steps == 6 and first.resumed_from is None
    [final] = run["final_checkpoints"]
    assert again.resumed_from == str(final)
    assert again.steps == 6 and again.train_loss == pytest.approx(first.train_loss)
    history = json.loads(Path(again.log_history).read_text())
    assert max(h["step"] for h in history) == 6
    assert [h["loss"] for h in history if "loss" in h] == pytest.approx(run["first_losses"])
    assert not list((out / "checkpoints").glob("*/checkpoint-7"))
    published = load_file(out / "adapter" / "adapter_model.safetensors")
    saved = load_file(final / "adapter_model.safetensors")
    assert published.keys() == saved.keys()
    assert all(published[k].equal(saved[k]) for k in saved)
