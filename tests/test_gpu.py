"""GPU tests of the training stage (``pytest -m gpu``): skipped where CUDA or Unsloth is absent.

They run ``tasks.train.train`` itself (the function the Prefect task wraps) with the Unsloth backend on a small
real-architecture model: a Qwen2 built from its config (hidden 512, 4 layers), saved in bf16 and loaded in 4-bit.
  - training (packing + padding-free, 8-bit AdamW, bf16, cosine + warm-up) lowers the loss and writes an adapter;
  - evaluation + early stopping run (loss only, through the fused LM head);
  - a training process killed (SIGKILL) mid-run is resumed by a rerun from its last complete checkpoint and reaches
    the same final step count;
  - a real CUDA out-of-memory (an oversized micro-batch under ``torch.cuda.set_per_process_memory_fraction``) makes
    the retry loop halve the micro-batch and double accumulation.
The GPU image has no Prefect: there a stand-in for its decorators is installed (see ``_stub_prefect``), so the test
exercises tasks.train, not the flow.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

try:
    import torch

    CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    CUDA = False


def _has_unsloth() -> bool:
    import importlib.util

    return importlib.util.find_spec("unsloth") is not None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not CUDA, reason="needs CUDA"),
    pytest.mark.skipif(CUDA and not _has_unsloth(), reason="needs unsloth (pip install '.[gpu]')"),
]


def _stub_prefect() -> None:
    """The GPU image has no prefect: bench/train_throughput.py's stand-in serves its imports (see there)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.stub_prefect()


# The backend under test; GPU_TEST_BACKEND=hf runs the same checks through the HF baseline (also on a CPU, when the
# functions are called directly: the pytest markers above still skip without CUDA).
BACKEND = os.environ.get("GPU_TEST_BACKEND", "unsloth")


def _imports():
    _stub_prefect()
    if BACKEND == "unsloth":
        import unsloth  # noqa: F401  (before transformers / trl / peft)

    from tasks import train as train_mod
    from tasks.config import ModelConfig, TokenizeConfig, TrainConfig

    return train_mod, ModelConfig, TokenizeConfig, TrainConfig


# --- fixtures -----------------------------------------------------------------------------------------------------


def build_model(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    config = Qwen2Config(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=2, vocab_size=4096, max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=1001, eos_token_id=1002, pad_token_id=1003)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    vocab = {f"w{i}": i for i in range(1000)}
    vocab.update({"<unk>": 1000, "<bos>": 1001, "<eos>": 1002, "<pad>": 1003})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                            pad_token="<pad>").save_pretrained(path)
    return path


def build_rows(path: Path, n: int, length: int | None, seed: int) -> Path:
    """Learnable rows: arithmetic progressions mod 900 (each token follows from the two before); variable lengths
    unless ``length`` is given; a short prompt masked out of the loss."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    input_ids, labels = [], []
    for _ in range(n):
        size = length or rng.randint(48, 400)
        start, step = rng.randrange(900), rng.randrange(1, 30)
        ids = [10 + (start + i * step) % 900 for i in range(size)]
        input_ids.append(ids)
        labels.append([-100] * 8 + ids[8:])
    Dataset.from_dict({"input_ids": input_ids, "labels": labels}).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-train")
    return {
        "model": str(build_model(root / "model")),
        "train": str(build_rows(root / "train", 400, None, seed=1)),
        "eval": str(build_rows(root / "eval", 32, None, seed=2)),
        "fixed": str(build_rows(root / "fixed", 160, 2048, seed=3)),
        "root": root,
    }


def resume_config(TrainConfig):
    return TrainConfig(backend=BACKEND, max_steps=24, micro_batch_size=4, gradient_accumulation=2,
                       learning_rate=2e-3, save_steps=4, save_total_limit=3, logging_steps=1, packing=False)


# --- tests --------------------------------------------------------------------------------------------------------


def test_unsloth_4bit_training_packed(assets, tmp_path):
    train_mod, ModelConfig, TokenizeConfig, TrainConfig = _imports()
    cfg = TrainConfig(backend=BACKEND, max_steps=20, micro_batch_size=2, gradient_accumulation=2,
                      learning_rate=3e-3, warmup_ratio=0.1, save_steps=10, logging_steps=1, packing=True)
    assert train_mod.choose_backend(cfg) == BACKEND
    result = train_mod.train(assets["train"], None, assets["model"], ModelConfig(name_or_path=assets["model"]), cfg,
                             TokenizeConfig(max_seq_length=1024), tmp_path / "run")
    print(result.model_dump_json(indent=1))
    assert result.backend == BACKEND and result.steps == 20 and not result.oom_retries
    assert (Path(result.adapter) / "adapter_config.json").exists()
    assert math.isfinite(result.train_loss) and result.last_loss < result.first_loss
    assert result.tokens_per_second > 0
    history = json.loads(Path(result.log_history).read_text())
    assert history[0]["learning_rate"] < max(h.get("learning_rate", 0) for h in history)  # warm-up
    adapter_cfg = json.loads((Path(result.adapter) / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == set(cfg.lora.target_modules)


def _child() -> None:
    """Entry for the kill test: trains slowly (a sleep per logged step) until the parent kills it."""
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    train_mod, ModelConfig, TokenizeConfig, TrainConfig = _imports()
    model_dir, data_dir, out_dir = sys.argv[2:5]
    train_mod.train(data_dir, None, model_dir, ModelConfig(name_or_path=model_dir), resume_config(TrainConfig),
                    TokenizeConfig(max_seq_length=1024), Path(out_dir), progress_hook=lambda *a: time.sleep(0.3))


def test_resume_after_kill(assets, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, __file__, "child", assets["model"], assets["train"], str(out)], env=env,
                            cwd=ROOT)
    deadline = time.monotonic() + 400
    killed_after = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = list(out.glob("checkpoints/*/checkpoint-8/checkpoint-complete.json"))
            if done:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_after = sorted(p.name for p in done[0].parent.parent.glob("checkpoint-*"))
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_after is not None, f"the child never wrote checkpoint-8 (exit code {proc.returncode})"
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "result.json").exists()

    train_mod, ModelConfig, TokenizeConfig, TrainConfig = _imports()
    result = train_mod.train(assets["train"], None, assets["model"], ModelConfig(name_or_path=assets["model"]),
                             resume_config(TrainConfig), TokenizeConfig(max_seq_length=1024), out)
    print("checkpoints at kill:", killed_after, "resumed from:", result.resumed_from)
    assert result.resumed_from is not None
    resumed_step = int(result.resumed_from.rsplit("-", 1)[1])
    assert 8 <= resumed_step < 24
    assert result.steps == 24
    history = json.loads(Path(result.log_history).read_text())
    # The resumed trainer state carries the killed run's history up to the checkpoint: every step logged exactly once
    assert [h["step"] for h in history if "loss" in h] == list(range(1, 25))


def test_oom_retry_halves_micro_batch(assets, tmp_path):
    import gc

    train_mod, ModelConfig, TokenizeConfig, TrainConfig = _imports()
    cfg = TrainConfig(backend=BACKEND, max_steps=2, micro_batch_size=64, gradient_accumulation=1,
                      min_micro_batch_size=1, save_steps=100, logging_steps=1, packing=False)
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(1.5 * 2**30 / total)
    try:
        result = train_mod.train(assets["fixed"], None, assets["model"], ModelConfig(name_or_path=assets["model"]),
                                 cfg, TokenizeConfig(max_seq_length=2048), tmp_path / "run")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    print(result.oom_retries, result.micro_batch_size, result.gradient_accumulation)
    assert result.oom_retries, "no out-of-memory happened: the cap was too generous"
    assert result.micro_batch_size <= 32
    assert result.micro_batch_size * result.gradient_accumulation == 64
    assert len(result.oom_retries) == int(math.log2(64 // result.micro_batch_size))
    assert result.steps == 2


def test_unsloth_eval_and_early_stopping_adafactor(assets, tmp_path):
    train_mod, ModelConfig, TokenizeConfig, TrainConfig = _imports()
    cfg = TrainConfig(backend=BACKEND, max_steps=20, micro_batch_size=4, gradient_accumulation=1,
                      learning_rate=1e-3, optimizer="adafactor", save_steps=5, eval_steps=5, early_stopping_patience=1,
                      logging_steps=5, packing=False)
    result = train_mod.train(assets["train"], assets["eval"], assets["model"], ModelConfig(name_or_path=assets["model"]),
                             cfg, TokenizeConfig(max_seq_length=1024), tmp_path / "run")
    history = json.loads(Path(result.log_history).read_text())
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    print(result.steps, evals)
    assert evals and all(math.isfinite(x) for x in evals)
    assert 5 <= result.steps <= 20


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _child()
