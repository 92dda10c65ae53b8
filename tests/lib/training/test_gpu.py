"""GPU tests of the training stage (``pytest -m gpu``): skipped where CUDA or Unsloth is absent.

They run ``tasks.train.train`` itself (the function the Prefect task wraps) with the Unsloth backend on a small
real-architecture model: a Qwen2 built from its config (hidden 512, 4 layers), saved in bf16 and loaded in 4-bit.
  - training (packing + padding-free, 8-bit AdamW, bf16, cosine + warm-up) lowers the loss and writes an adapter;
  - evaluation + early stopping run (loss only, through the fused LM head);
  - a training process killed (SIGKILL) mid-run is resumed by a rerun from its last complete checkpoint and reaches
    the same final step count;
  - a real CUDA out-of-memory (an oversized micro-batch under ``torch.cuda.set_per_process_memory_fraction``) makes
    the retry loop halve the micro-batch and double accumulation;
  - DPO, ORPO and KTO train a few steps on the 4-bit base with finite losses.
The GPU image has no Prefect: there a stand-in for its decorators is installed (see ``_stub_prefect``), so the test
exercises tasks.train, not the flow.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

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

    from r1lib.config import ModelConfig, TokenizeConfig, TrainConfig
    from tasks import train as train_mod

    return train_mod, ModelConfig, TokenizeConfig, TrainConfig


# --- fixtures -----------------------------------------------------------------------------------------------------


def build_model(path: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config

    config = Qwen2Config(
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=4096,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1001,
        eos_token_id=1002,
        pad_token_id=1003,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    vocab = {f"w{i}": i for i in range(1000)}
    vocab.update({"<unk>": 1000, "<bos>": 1001, "<eos>": 1002, "<pad>": 1003})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    ).save_pretrained(path)
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


def build_pairs(path: Path, n: int, seed: int, unpaired: bool = False) -> Path:
    """Learnable preference pairs: the prompt starts a progression mod 900, the chosen side continues it, the rejected
    side is random tokens; KTO's unpaired rows (``unpaired``) are the same pairs split."""
    import random

    from datasets import Dataset

    from r1lib.data.preference_tokens import unpair

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        start, step = rng.randrange(900), rng.randrange(1, 30)
        sequence = [10 + (start + i * step) % 900 for i in range(rng.randint(40, 160))]
        prompt, answer = sequence[:16], sequence[16:]
        wrong = [10 + rng.randrange(900) for _ in answer]
        rows.append({"prompt_ids": [1001, *prompt], "chosen_ids": answer, "chosen_labels": answer,
                     "rejected_ids": wrong, "rejected_labels": wrong})  # fmt: skip
    Dataset.from_list(unpair(rows) if unpaired else rows).save_to_disk(str(path))
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-train")
    return {
        "model": str(build_model(root / "model")),
        "train": str(build_rows(root / "train", 400, None, seed=1)),
        "eval": str(build_rows(root / "eval", 32, None, seed=2)),
        "fixed": str(build_rows(root / "fixed", 160, 2048, seed=3)),
        "pairs": str(build_pairs(root / "pairs", 64, seed=4)),
        "unpaired": str(build_pairs(root / "unpaired", 32, seed=5, unpaired=True)),
        "root": root,
    }


def resume_config(TrainConfig):
    return TrainConfig(
        backend=BACKEND,
        max_steps=24,
        micro_batch_size=4,
        gradient_accumulation=2,
        learning_rate=2e-3,
        save_steps=4,
        save_total_limit=3,
        logging_steps=1,
        packing=False,
    )


# --- tests --------------------------------------------------------------------------------------------------------


def test_unsloth_4bit_training_packed(assets, tmp_path):
    train_mod, ModelConfig, TokenizeConfig, TrainConfig = _imports()
    cfg = TrainConfig(
        backend=BACKEND,
        max_steps=20,
        micro_batch_size=2,
        gradient_accumulation=2,
        learning_rate=3e-3,
        warmup_ratio=0.1,
        save_steps=10,
        logging_steps=1,
        packing=True,
    )
    assert train_mod.choose_backend(cfg) == BACKEND
    result = train_mod.train(
        assets["train"],
        None,
        assets["model"],
        ModelConfig(name_or_path=assets["model"]),
        cfg,
        TokenizeConfig(max_seq_length=1024),
        tmp_path / "run",
    )
    print(result.model_dump_json(indent=1))
    assert result.backend == BACKEND and result.steps == 20 and not result.oom_retries
    assert (Path(result.adapter) / "adapter_config.json").exists()
    assert math.isfinite(result.train_loss) and result.last_loss < result.first_loss
    assert result.tokens_per_second > 0
    history = json.loads(Path(result.log_history).read_text())
    assert history[0]["learning_rate"] < max(h.get("learning_rate", 0) for h in history)  # warm-up
    adapter_cfg = json.loads((Path(result.adapter) / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == set(cfg.lora.target_modules)


@pytest.mark.parametrize("method", ["dpo", "orpo", "kto"])
def test_preference_methods_train_on_the_4bit_base(assets, tmp_path, method):
    """DPO, ORPO and KTO through the backend on the 4-bit base: each trains its steps with finite losses and writes
    an adapter (ORPO's loss and KTO's, as DPO's, through TRL's fused LM head)."""
    train_mod, ModelConfig, TokenizeConfig, TrainConfig = _imports()
    cfg = TrainConfig(backend=BACKEND, method=method, max_steps=4, micro_batch_size=4, gradient_accumulation=1,
                      learning_rate=1e-3, save_steps=100, logging_steps=1, packing=False)  # fmt: skip
    result = train_mod.train(
        assets["unpaired" if method == "kto" else "pairs"],
        None,
        assets["model"],
        ModelConfig(name_or_path=assets["model"]),
        cfg,
        TokenizeConfig(max_seq_length=512),
        tmp_path / "run",
    )
    print(method, result.model_dump_json(indent=1))
    assert result.backend == BACKEND and result.steps == 4 and not result.oom_retries
    assert (Path(result.adapter) / "adapter_model.safetensors").exists()
    losses = [h["loss"] for h in json.loads(Path(result.log_history).read_text()) if "loss" in h]
    assert len(losses) == 4 and all(math.isfinite(loss) for loss in losses), losses


def _child() -> None:
    """Entry for the kill test: trains slowly (a sleep per logged step) until the parent kills it."""
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    train_mod, ModelConfig, TokenizeConfig, TrainConfig = _imports()
    model_dir, data_dir, out_dir = sys.argv[2:5]
    train_mod.train(
        data_dir,
        None,
        model_dir,
        ModelConfig(name_or_path=model_dir),
        resume_config(TrainConfig),
        TokenizeConfig(max_seq_length=1024),
        Path(out_dir),
        progress_hook=lambda *a: time.sleep(0.3),
    )


def test_resume_after_kill(assets, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, __file__, "child", assets["model"], assets["train"], str(out)], env=env, cwd=ROOT
    )
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
    result = train_mod.train(
        assets["train"],
        None,
        assets["model"],
        ModelConfig(name_or_path=assets["model"]),
        resume_config(TrainConfig),
        TokenizeConfig(max_seq_length=1024),
        out,
    )
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
    cfg = TrainConfig(
        backend=BACKEND,
        max_steps=2,
        micro_batch_size=64,
        gradient_accumulation=1,
        gradient_checkpointing=True,  # this test is about the halving: no plan, no recompute to turn on first
        memory_plan="off",
        min_micro_batch_size=1,
        save_steps=100,
        logging_steps=1,
        packing=False,
    )
    gc.collect()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(1.5 * 2**30 / total)
    try:
        result = train_mod.train(
            assets["fixed"],
            None,
            assets["model"],
            ModelConfig(name_or_path=assets["model"]),
            cfg,
            TokenizeConfig(max_seq_length=2048),
            tmp_path / "run",
        )
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
    cfg = TrainConfig(
        backend=BACKEND,
        max_steps=20,
        micro_batch_size=4,
        gradient_accumulation=1,
        learning_rate=1e-3,
        optimizer="adafactor",
        save_steps=5,
        eval_steps=5,
        early_stopping_patience=1,
        logging_steps=5,
        packing=False,
    )
    result = train_mod.train(
        assets["train"],
        assets["eval"],
        assets["model"],
        ModelConfig(name_or_path=assets["model"]),
        cfg,
        TokenizeConfig(max_seq_length=1024),
        tmp_path / "run",
    )
    history = json.loads(Path(result.log_history).read_text())
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    print(result.steps, evals)
    assert evals and all(math.isfinite(x) for x in evals)
    assert 5 <= result.steps <= 20


# --- the whole flow on CUDA ---------------------------------------------------------------------------------------

# The embedded R1-Distill-Qwen (real Qwen2 architecture, BPE and R1 template, so the GGUF export runs too), widened to a
# head size of 64 as real Qwen2/Llama models have, trained by Unsloth in 4-bit.
GPU_FLOW = [
    "model.embedded.hidden_size=128",
    "model.embedded.num_heads=2",
    "model.embedded.num_kv_heads=2",
    "model.embedded.intermediate_size=512",
    "train.max_steps=60",
    "train.learning_rate=5e-3",
    "train.optimizer=adamw_8bit",
]


def run_flow(tmp_path: Path, *settings: str) -> dict:
    if importlib.util.find_spec("prefect") is None:
        pytest.skip("needs prefect (carry .gpu/prefect-bundle.tar.xz, see scripts/gpu-bundle)")
    command = [sys.executable, "-m", "flows.finetune", "--set", f"runs_dir={tmp_path / 'runs'}"]
    for setting in [*GPU_FLOW, *settings]:
        command += ["--set", setting]
    started = time.monotonic()
    proc = subprocess.run(
        command,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
    )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    path = next(line.split("summary: ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("summary: "))
    summary = json.loads(
        Path(ROOT / path.strip()).read_text()
        if not Path(path.strip()).is_absolute()
        else Path(path.strip()).read_text()
    )
    print(f"flow wall time {time.monotonic() - started:.0f} s")
    return summary


def check_flow_summary(summary: dict, processes: int) -> None:
    train, ev = summary["train"], summary["evaluate"]
    assert train["backend"] == BACKEND and train["processes"] == processes
    assert train["steps"] == 60 and train["last_loss"] < train["first_loss"]
    assert ev["perplexity_after"] < ev["perplexity_before"] / 2
    assert {g["type"] for g in summary["gguf"]} >= {"F16", "Q8_0", "Q4_K_M"}
    assert all(g["smoke_answer"] for g in summary["gguf"])
    adapter = Path(train["adapter"])
    assert (adapter / "adapter_model.safetensors").exists()
    assert [p.name for p in adapter.parent.glob("*adapter*")] == ["adapter"]  # one adapter, no staging left


def test_finetune_flow_with_unsloth_4bit_on_cuda(tmp_path):
    check_flow_summary(run_flow(tmp_path), processes=1)


@pytest.mark.skipif(not CUDA or torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_finetune_flow_ddp_on_two_gpus_writes_one_adapter(tmp_path):
    summary = run_flow(tmp_path, "train.gpus=2", "train.micro_batch_size=8", "train.gradient_accumulation=2")
    check_flow_summary(summary, processes=2)
    assert summary["train"]["launch"] == "ddp"


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    _child()
