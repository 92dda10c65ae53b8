"""What a writer killed with SIGKILL leaves beside its target (a staging folder with a truncated tokenizer.json) is
removed by the next writer of the same target; a live writer's staging is never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from r1lib.io import atomic_dir
with atomic_dir(Path(sys.argv[1])) as tmp:
    (tmp / "model.safetensors").write_bytes(b"\\0" * 1000)
    (tmp / "tokenizer.json").write_text('{"version": "1.0", "truncated')
    print(tmp, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_writer(target: Path) -> Path:
    proc = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    staging = Path(proc.stdout.strip())
    assert staging.is_dir() and (staging / "tokenizer.json").read_text().endswith("truncated")
    return staging


def test_a_killed_writers_staging_folder_is_removed_by_the_next_writer(tmp_path):
    from r1lib.io import atomic_dir

    target = tmp_path / "merged"
    staging = killed_writer(target)
    with atomic_dir(target) as tmp:
        (tmp / "tokenizer.json").write_text("{}")
    assert not staging.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert (target / "tokenizer.json").read_text() == "{}"


def test_a_live_writers_staging_and_another_hosts_are_kept(tmp_path):
    from r1lib.io import atomic_path, clean_stale_siblings

    target = tmp_path / "report.json"
    with atomic_path(target) as mine:
        mine.write_text("{")
        other_host = tmp_path / ".report.json.tmp-some-other-host-1-abcd1234"
        other_host.write_text("{")
        assert clean_stale_siblings(target) == []  # this process is alive; the other host cannot be checked
        assert mine.exists() and other_host.exists()
    assert target.read_text() == "{" and other_host.exists()


def test_merge_removes_a_killed_merges_staging(tmp_path):
    """The export stage's merge, for real (the embedded model and a fresh LoRA adapter), after a killed merge left
    its staging folder with a truncated tokenizer.json."""
    from peft import LoraConfig, get_peft_model

    from r1lib.config import ModelConfig
    from r1lib.model.loading import load_causal_lm, load_tokenizer
    from r1lib.presets import preset
    from tasks.export import merge
    from tasks.resolve_model import resolve_model

    cfg = preset("tiny")
    model_dir = resolve_model(cfg.model, cfg.cache_dir)
    adapter = tmp_path / "adapter"
    base = load_causal_lm(model_dir, ModelConfig(load_in_4bit=False), four_bit=False)
    get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(adapter)
    load_tokenizer(model_dir, trust_remote_code=False).save_pretrained(adapter)

    out = tmp_path / "export" / "merged"
    staging = killed_writer(out)
    merge(model_dir, str(adapter), cfg.model, out)
    assert not staging.exists()
    assert [p.name for p in out.parent.iterdir()] == ["merged"]
    assert (out / "tokenizer.json").stat().st_size > 1000 and any(out.glob("*.safetensors"))
    assert os.listdir(out)
