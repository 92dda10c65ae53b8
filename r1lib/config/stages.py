"""The sections of the stages after training: evaluate, export, smoke and fairness."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from r1lib.config.base import FORGETTING_LIMIT, MAX_COUNT, NAME_PATTERN, Section, Unique
from r1lib.paths import InputPath, OutputPath


class EvalConfig(Section):
    max_examples: int = Field(100, ge=1, le=MAX_COUNT, description="Held-out rows used for generation accuracy.")
    batch_size: int = Field(16, ge=1, le=4096)
    max_new_tokens: int = Field(64, ge=1, le=1_048_576)
    time_limit_s: float = Field(
        600, gt=0, le=7 * 24 * 3600, description="Stop generating (and say so) past this time per model."
    )
    temperature: float = Field(0.0, ge=0, le=100, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, ge=1, le=100)
    no_repeat_ngram_size: int = Field(0, ge=0, le=100)
    kv_cache: Literal["auto", "static", "dynamic"] = Field(
        "auto",
        description="static: decoding into a preallocated KV cache, the one-token decode step recorded once as "
        "a CUDA graph on a GPU and replayed (r1lib/model/graph_decode.py; no torch.compile); dynamic: plain HF "
        "generate; auto: static on a CUDA device, dynamic elsewhere. A repetition penalty, n-gram blocking or a "
        "model other than Llama / Qwen2 use HF generate whatever this says. bench/eval_generation.py measures both.",
    )
    max_forgetting_ratio: float | None = Field(
        FORGETTING_LIMIT,
        gt=0,
        le=1e6,
        description="Limit on replay perplexity after / before (forgetting); None: no limit.",
    )
    on_forgetting: Literal["warn", "fail"] = Field("warn", description="What to do past max_forgetting_ratio.")
    on_collapse: Literal["stop", "warn"] = Field(
        "stop",
        description="A collapsed model (format compliance from above 0 to 0, or forgetting past "
        "collapse_forgetting_ratio): stop the run before the smoke test and the card with a failure summary naming "
        "the learning rate, steps and numbers (r1lib/training/collapse.py), or warn and ship it anyway.",
    )
    collapse_forgetting_ratio: float = Field(
        20.0, gt=1, le=1e6, description="Replay perplexity after / before past which the model counts as collapsed."
    )
    perplexity_rows: int | None = Field(
        None, ge=1, le=MAX_COUNT, description="Held-out / replay rows for perplexity (None: all)."
    )
    lm_eval_tasks: Annotated[list[Annotated[str, Field(pattern=NAME_PATTERN)]], Unique] = Field(
        [], description="Optional lm-evaluation-harness tasks, run only from local data."
    )
    lm_eval_path: InputPath | None = Field(
        None, description="Local folder with the lm_eval task YAMLs/data (never downloaded)."
    )
    lm_eval_limit: int | None = Field(None, ge=1, le=MAX_COUNT, description="Examples per lm_eval task (None: all).")
    lm_eval_strip_thinking: bool = Field(
        True,
        description="Score only the answer after the last </think> (lm-eval's think_end_token); false scores the "
        "whole response, reasoning included.",
    )
    lm_eval_thinking_tokens: int = Field(
        2048,
        ge=0,
        le=1_048_576,
        description="Thinking budget per lm_eval answer: generation stops at this plus lm_eval_answer_tokens new "
        "tokens, and a response still inside its think block there has no answer (scored wrong).",
    )
    lm_eval_answer_tokens: int = Field(256, ge=1, le=1_048_576, description="New tokens for the answer after thinking.")
    generation: Literal["auto", "merged", "adapter"] = Field(
        "auto",
        description="How the held-out rows are generated and scored. merged: the 4-bit base dequantized once and the "
        "adapter merged into it (the same function as the 4-bit model with the adapter, without dequantizing every "
        "weight at every step); adapter: the 4-bit model with the adapter attached (plain HF generate); auto: merged "
        "when the full-precision weights and the generation cache fit the memory available, else adapter.",
    )
    baseline_rows: int = Field(
        0,
        ge=0,
        le=MAX_COUNT,
        description="Also time plain HF generate on the 4-bit model with the adapter attached over this many "
        "held-out rows (one batch, at most baseline_tokens new tokens), to report the generation speed-up; 0: off.",
    )
    baseline_tokens: int = Field(128, ge=1, le=1_048_576, description="New tokens per row in the baseline timing.")
    preference_beta: float = Field(
        0.1,
        gt=0,
        le=100,
        description="Held-out preference pairs (a dpo/orpo/kto run): the beta of the reported mean reward margin, "
        "beta x (tuned - base log-probability margin); set it to the run's train.dpo.beta.",
    )


class ExportConfig(Section):
    outtype: Literal["f16", "bf16", "f32"] = Field("f16", description="The converter's full-precision GGUF type.")
    quantizations: Annotated[
        list[Literal["Q4_K_M", "Q5_K_M", "Q8_0", "Q4_0", "Q5_0", "Q6_K", "Q3_K_M", "Q2_K"]], Unique
    ] = ["Q8_0", "Q4_K_M"]
    keep_full_precision: bool = Field(
        True,
        description="Ship the outtype GGUF beside the quantized ones; off: it is only the quantizer's input, deleted "
        "once every quantized type is written (kept when no quantization is requested).",
    )
    scratch_dir: Literal["auto", "export"] | OutputPath = Field(
        "auto",
        min_length=1,
        description="Where the full-precision GGUF goes when it is only the quantizer's input (keep_full_precision "
        "off): auto: /dev/shm (RAM) when it has room and the memory is free, else the export folder; export: the "
        "export folder; or a folder. In RAM the 2 bytes a parameter (7B: 14.5 GB) never wait for the disk.",
    )


class SmokeConfig(Section):
    prompts: list[Annotated[str, Field(min_length=1, max_length=100_000)]] = Field(
        [
            "My brother talked about the lion and the owl at the park. What is the sentence about?",
            "What is the capital of France?",
        ],
        min_length=1,
        max_length=100,
    )
    max_tokens: int = Field(64, ge=1, le=1_048_576)
    parity_tokens: int = Field(24, ge=1, le=4096, description="Greedy tokens compared between HF and the F16 GGUF.")
    n_ctx: int = Field(512, ge=64, le=1_048_576)
    perplexity_rows: int = Field(
        64, ge=0, le=MAX_COUNT, description="Held-out rows for GGUF vs HF perplexity (0: skip)."
    )
    max_f16_perplexity_drift: float = Field(
        0.02, ge=0, le=100, description="Fail when the F16/BF16 GGUF's perplexity differs from HF's by more (relative)."
    )
    max_quant_perplexity_increase: float | None = Field(
        None,
        ge=0,
        le=100,
        description="Fail when a quantized GGUF's perplexity exceeds the F16's by more (relative); None: report only.",
    )
    use_eval_decoding: bool = Field(
        True, description="Generate with the evaluate stage's temperature/top-p/repeat penalty."
    )
    timeout_s: float = Field(600, gt=0, le=7 * 24 * 3600, description="Per GGUF, in the smoke child process.")
    n_threads: int | None = Field(
        None, ge=1, le=1024, description="llama.cpp threads (None: half the CPU cores, 1 to 8)."
    )
    n_gpu_layers: int = Field(
        -1, ge=-1, le=100_000, description="Layers llama.cpp offloads to a GPU (-1: all; no effect on CPU builds)."
    )
    gguf_perplexity: Literal["auto", "all", "quantized", "none"] = Field(
        "auto",
        description="Which GGUFs get the held-out perplexity pass (perplexity_rows). all: every GGUF, the "
        "full-precision one against the HF merged model; quantized: only the quantized types, each against the HF "
        "merged model's perplexity (the full-precision GGUF keeps the greedy-token parity check); auto: all when "
        "llama.cpp offloads to a GPU or the full-precision GGUF is under 2 GiB, else quantized.",
    )
    perplexity_max_tokens: int | None = Field(
        16384,
        ge=1,
        le=MAX_COUNT,
        description="Held-out rows go into the perplexity pass in order until they hold this many tokens (per GGUF; "
        "a first row longer than that is cut to it), so long R1 rows cannot turn the check into minutes of CPU; "
        "None: all perplexity_rows.",
    )
    proportionate_perplexity_tokens: int | None = Field(
        256,
        ge=1,
        le=MAX_COUNT,
        description="Where the smoke test is proportionate (no GPU for llama.cpp, a big GGUF), the perplexity pass "
        "reads at most this many tokens per GGUF, a longer row cut to it (a 7B quantized GGUF scored 512 tokens in "
        "23-26 s on 8 CPU threads of an H100 host); None: perplexity_max_tokens alone.",
    )
    require_r1_format: bool = Field(
        True,
        description="Fail unless every GGUF answers each prompt with a closed think block and a non-empty answer. "
        "Off only for models that cannot (random weights in a rehearsal): the outputs are still recorded.",
    )
    parity_logit_tolerance: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Where the F16 GGUF's greedy token differs from the HF merged model's, accept it when HF scored "
        "it within this many logits of its own choice (a near tie that rounding decides) and stop comparing there; "
        "0: every compared token must be equal.",
    )
    proportionate: Literal["auto", "on", "off"] = Field(
        "auto",
        description="on: only the quantized GGUFs run (all at once), each answering the first prompt, and greedy "
        "parity with HF is checked on the most precise of them; the full-precision file's header was checked when "
        "it was written. off: every GGUF answers every prompt, parity on the full-precision one. auto: on where "
        "llama.cpp has no GPU and a GGUF is 2 GiB or more (a 7B F16 generates about 5 tokens/s on a CPU).",
    )
    quantized_parity_logit_tolerance: float = Field(
        0.5,
        ge=0,
        le=100,
        description="parity_logit_tolerance where parity is checked on a quantized GGUF (proportionate, or no "
        "full-precision file kept): quantization moves logits by more than rounding does.",
    )


class FairnessConfig(Section):
    """The model-level fairness check (tasks/fairness.py): held-out prompts that mention a group term are answered
    as written and as their counterfactual twin (the debias term pairs), by the base and the fine-tuned model."""

    enabled: bool = True
    max_prompts: int = Field(8, ge=1, le=MAX_COUNT, description="Held-out prompts with a twin that are generated for.")
    max_new_tokens: int | None = Field(
        None, ge=1, le=1_048_576, description="Tokens per answer (None: evaluate.max_new_tokens)."
    )
