"""The proportionate smoke test: a big model on a CPU llama.cpp runs only its quantized files, each answering one
prompt, with greedy parity on the most precise of them; a small one, or one llama.cpp offloads to a GPU, runs all."""

from __future__ import annotations

from r1lib.config import SmokeConfig
from r1lib.export.gguf import GGUFFile
from r1lib.export.smoke_checks import full_precision_bytes, perplexity_budget, proportionate_on, smoke_plan

GIB = 2**30


def files(sizes: dict[str, float]) -> list[GGUFFile]:
    return [GGUFFile(path=f"/x/m-{t}.gguf", type=t, bytes=int(s * GIB)) for t, s in sizes.items()]


def test_a_big_model_on_a_cpu_llama_runs_only_the_quantized_files_with_parity_on_q8():
    plan = smoke_plan(SmokeConfig(), files({"F16": 14.2, "Q4_K_M": 4.4, "Q8_0": 7.5}), gpu_offload=False)
    assert plan.run == ["Q8_0", "Q4_K_M"] and plan.parity_on == "Q8_0" and plan.prompts == 1
    assert plan.tolerance == SmokeConfig().quantized_parity_logit_tolerance > 0


def test_a_small_model_or_a_gpu_llama_runs_every_file_and_every_prompt_with_exact_f16_parity():
    cfg = SmokeConfig()
    for sizes, offload in (({"F16": 0.03, "Q8_0": 0.02, "Q4_K_M": 0.02}, False), ({"F16": 14.2, "Q8_0": 7.5}, True)):
        plan = smoke_plan(cfg, files(sizes), gpu_offload=offload)
        assert plan.run == list(sizes) and plan.parity_on == "F16" and plan.prompts == len(cfg.prompts)
        assert plan.tolerance == cfg.parity_logit_tolerance == 0


def test_without_a_kept_full_precision_file_parity_is_on_the_most_precise_quantized_one():
    plan = smoke_plan(SmokeConfig(proportionate="off"), files({"Q4_K_M": 0.1, "Q5_K_M": 0.1}), gpu_offload=False)
    assert plan.run == ["Q4_K_M", "Q5_K_M"] and plan.parity_on == "Q5_K_M" and plan.tolerance > 0


def test_proportionate_on_and_off_override_the_size_rule():
    small = files({"F16": 0.03, "Q8_0": 0.02})
    assert smoke_plan(SmokeConfig(proportionate="on"), small, gpu_offload=False).run == ["Q8_0"]
    big = files({"F16": 14.2, "Q8_0": 7.5})
    assert smoke_plan(SmokeConfig(proportionate="off"), big, gpu_offload=False).run == ["F16", "Q8_0"]
    only_full = files({"F16": 14.2})  # nothing quantized: the full-precision file is the one that runs
    assert smoke_plan(SmokeConfig(), only_full, gpu_offload=False).run == ["F16"]


def test_a_proportionate_plan_caps_the_perplexity_pass_and_the_reference_reads_the_same_budget(tmp_path):
    import json

    from r1lib.model.shapes import config_fields

    cfg = SmokeConfig()
    big = smoke_plan(cfg, files({"F16": 14.2, "Q4_K_M": 4.4, "Q8_0": 7.5}), gpu_offload=False)
    assert big.perplexity_tokens == cfg.proportionate_perplexity_tokens < cfg.perplexity_max_tokens
    gpu = smoke_plan(cfg, files({"F16": 14.2, "Q8_0": 7.5}), gpu_offload=True)
    assert gpu.perplexity_tokens == cfg.perplexity_max_tokens
    tight = SmokeConfig(perplexity_max_tokens=256)  # the smaller of the two limits wins
    assert smoke_plan(tight, files({"F16": 14.2, "Q8_0": 7.5}), gpu_offload=False).perplexity_tokens == 256
    # the HF reference runs before any GGUF exists: it sizes the model from its config.json, as the plan will
    (tmp_path / "config.json").write_text(json.dumps(config_fields("r1-qwen-7b")))
    assert full_precision_bytes(str(tmp_path)) > 14 * GIB
    on = proportionate_on(cfg, full_precision_bytes(str(tmp_path)), gpu_offload=False)
    assert perplexity_budget(cfg, on) == big.perplexity_tokens
    assert full_precision_bytes(str(tmp_path / "nothing-here")) == 0
