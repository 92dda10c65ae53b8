"""Failures that no retry can fix fail at once: pickle-only weights, a chat template the sandbox stops, a full disk.

Each is produced for real (a model folder, a rendered template, a write that fails with ENOSPC) and then handed to
the retry condition every stage uses; one goes through a real Prefect task with two retries, to count its attempts.
"""

from __future__ import annotations

import copy
import errno
import subprocess
from pathlib import Path

import pytest

from r1lib.policy import retry_unless_permanent


class _State:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def retried(exc: BaseException) -> bool:
    return retry_unless_permanent(None, None, _State(exc))


def pickle_only_model(folder: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


def test_a_folder_with_only_pickle_weights_is_refused_before_any_work_and_not_retried(tmp_path):
    from r1lib.config import ModelConfig
    from r1lib.errors import UnsafeWeights
    from r1lib.model.loading import load_causal_lm
    from tasks.resolve_model import resolve_model

    model_dir = pickle_only_model(tmp_path / "pickled")
    cfg = ModelConfig(name_or_path=str(model_dir), allowed_roots=[str(tmp_path)])
    with pytest.raises(UnsafeWeights, match=r"pickle files \['pytorch_model.bin'\]") as refused:
        resolve_model(cfg, str(tmp_path / "cache"))
    assert not retried(refused.value)
    with pytest.raises(UnsafeWeights) as refused:
        load_causal_lm(str(model_dir), cfg, four_bit=False)
    assert not retried(refused.value)


def test_a_chat_template_the_sandbox_stops_is_not_retried(tokenizer):
    from jinja2.exceptions import SecurityError

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = "{{ ''.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(SecurityError) as stopped:
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert not retried(stopped.value)
    wrapped = RuntimeError("tokenize shard 3 failed")
    wrapped.__cause__ = stopped.value  # raised from a stage that wraps it
    assert not retried(wrapped)


def test_a_full_disk_names_the_file_and_the_free_space_and_is_not_retried(tmp_path):
    from r1lib.errors import DiskFull
    from r1lib.io import atomic_path, write_text

    target = tmp_path / "out" / "report.json"
    with pytest.raises(DiskFull) as full:
        with atomic_path(target) as tmp:
            tmp.write_text("{")
            raise OSError(errno.ENOSPC, "No space left on device")
    message = str(full.value)
    assert str(target) in message and "MiB free on the filesystem of" in message, message
    assert isinstance(full.value, OSError) and full.value.errno == errno.ENOSPC
    assert not retried(full.value)
    assert not target.exists() and [p.name for p in target.parent.iterdir()] == []
    write_text(target, "{}")  # a retry after space was freed writes normally
    assert target.read_text() == "{}"


def test_a_child_process_that_ran_out_of_disk_is_not_retried(tmp_path, monkeypatch):
    """The GGUF converter runs in a child: its ENOSPC arrives as text in a RuntimeError."""
    import tasks.export as export
    from r1lib.errors import DiskFull

    def full_disk(cmd, **kwargs):
        Path(cmd[cmd.index("--outfile") + 1]).write_bytes(b"GGUF")
        return subprocess.CompletedProcess(cmd, 1, "", "OSError: [Errno 28] No space left on device")

    monkeypatch.setattr(export.subprocess, "run", full_disk)
    (tmp_path / "merged").mkdir()
    with pytest.raises(DiskFull, match=r"writing .*model-F16.gguf \(.* MiB free") as full:
        export.convert(str(tmp_path / "merged"), "f16", tmp_path / "model-F16.gguf")
    assert not retried(full.value)


def test_transient_failures_are_still_retried():
    assert retried(OSError(errno.EIO, "Input/output error"))
    assert retried(ConnectionResetError("peer reset"))
    assert retried(RuntimeError("CUDA error: an illegal memory access was encountered"))
    assert retried(TimeoutError("slow"))


def test_a_permanent_failure_runs_once_in_a_real_task_with_retries(prefect_harness, tokenizer):
    """A stage task (two retries) that hits a sandboxed template runs once; one that hits an I/O error runs three
    times."""
    from jinja2.exceptions import SecurityError
    from prefect import flow, task

    from r1lib.policy import stage_options

    attempts = {"template": 0, "io": 0}
    options = {**stage_options(retries=2, cache=False), "retry_delay_seconds": 0, "retry_jitter_factor": None}

    @task(**options)
    def render_hostile():
        attempts["template"] += 1
        tok = copy.deepcopy(tokenizer)
        tok.chat_template = "{{ cycler.__init__.__globals__.os.environ }}"
        tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)

    @task(**options)
    def flaky_io():
        attempts["io"] += 1
        raise OSError(errno.EIO, "Input/output error")

    @flow
    def both():
        return render_hostile(return_state=True), flaky_io(return_state=True)

    template_state, io_state = both()
    assert template_state.is_failed() and io_state.is_failed()
    with pytest.raises(SecurityError):
        template_state.result()
    assert attempts == {"template": 1, "io": 3}
