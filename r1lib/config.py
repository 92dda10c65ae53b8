"""One typed, strict configuration for the whole pipeline.

``PipelineConfig`` is the finetune flow's single parameter, so the Prefect UI renders it as the run form; each stage
reads only its own section. Presets are in r1lib/presets.py. Unknown keys are errors, values are never coerced (no
"yes" for true, no "1e-3" for a number), numbers are finite and bounded, and names are names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from r1lib.data.columns import ColumnMap
from r1lib.paths import InputPath, OutputPath

EMBEDDED = "embedded"  # ModelConfig.name_or_path value that selects the tiny model built from code


# Replay perplexity after / before above which the model counts as having forgotten general data (the
# evaluation's warning and the nightly promotion's refusal share it).
FORGETTING_LIMIT = 1.5
# Upper bounds that no real run reaches, so that a typo (1e12 steps) is refused instead of run.
MAX_COUNT = 10_000_000
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
# A file or folder name: letters, digits, '.', '_', '-', not starting with '.' (no '/', no '..', not absolute).
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$"


def _unique(values: list) -> list:
    """A list that names a thing twice is a mistake (a file read twice, two tasks writing one GGUF)."""
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"lists {twice} more than once")
    return values


def _no_parent_segment(value: str | None) -> str | None:
    if value is not None and ".." in value.split("/"):
        raise ValueError(f"{value!r} has a '..' segment")
    return value


Unique = AfterValidator(_unique)


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class EmbeddedModelConfig(Section):
    """Shape and pre-training of the embedded tiny R1-Distill-Qwen (see r1lib/model/embedded.py)."""

    hidden_size: int = Field(64, ge=32, le=1024, description="Multiple of 32 (4-bit blocks, GGUF rows).")
    intermediate_size: int = Field(256, ge=32, le=16384)
    num_layers: int = Field(4, ge=1, le=32)
    num_heads: int = Field(4, ge=1, le=128)
    num_kv_heads: int = Field(2, ge=1, le=128)
    max_position_embeddings: int = Field(2048, ge=128, le=1_048_576)
    tie_word_embeddings: bool = True
    pretrain_steps: int = Field(
        600, ge=1, le=MAX_COUNT, description="Causal-LM steps on data/corpus/general.txt before use."
    )
    pretrain_seq_len: int = Field(128, ge=16, le=65536)
    pretrain_batch_size: int = Field(16, ge=1, le=4096)
    pretrain_lr: float = Field(3e-3, gt=0, le=1)
    seed: Seed = 1234
    corpus_path: InputPath = Field("data/corpus/general.txt", description="Pre-training text.")
    chat_paths: list[InputPath] = Field(
        ["data/sample/general.jsonl"], description="R1-format chats in the pre-training."
    )
    chat_repeats: int = Field(4, ge=0, le=1000, description="How often each chat appears in the pre-training stream.")
    vocab_paths: list[InputPath] = Field(
        [
            "data/sample/train.jsonl",
            "data/sample/test.jsonl",
            "data/sample/general.jsonl",
            "data/augment/prompt_templates.txt",
            "data/debias/term_pairs.csv",
        ],
        description="Texts whose tokens the tiny model knows (see r1lib/model/embedded.py).",
    )

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads or self.hidden_size % 32:
            raise ValueError("hidden_size must be a multiple of 32 and of num_heads; num_heads of num_kv_heads")
        return self


class ModelConfig(Section):
    name_or_path: str = Field(
        EMBEDDED,
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="A Hugging Face hub id, a local model directory, or 'embedded'.",
    )
    revision: Annotated[str | None, AfterValidator(_no_parent_segment)] = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$", description="Hub revision (branch, tag or commit) to pin."
    )
    load_in_4bit: bool = Field(True, description="QLoRA: load the frozen base in 4-bit NF4 (bitsandbytes).")
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model. Off unless you trust it."
    )
    hub_token_secret: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
        description="Name of a Prefect Secret block holding the hub token; else HF_TOKEN from the environment.",
    )
    allowed_roots: list[str] = Field(
        ["{project}/.cache", ".", "{hf_cache}"],
        description="Folders a local model directory must resolve under (symlinks followed), and with it every file "
        "it links to or its safetensors index names (r1lib/paths.py); relative ones are relative to the "
        "working directory, {project} is this checkout, {hf_cache} the Hugging Face hub cache. Hub ids "
        "and the embedded model are not paths and are not affected.",
    )
    embedded: EmbeddedModelConfig = EmbeddedModelConfig()


class DataConfig(Section):
    train_paths: Annotated[list[Annotated[InputPath, Field(min_length=1)]], Unique] = Field(
        ["data/sample/train.jsonl"],
        min_length=1,
        max_length=10_000,
        description="Training files, folders or globs (at least one, each once).",
    )
    test_path: InputPath = Field("data/sample/test.jsonl", description="Held-out evaluation file; never trained on.")
    replay_path: InputPath | None = Field(
        "data/sample/general.jsonl", description="General data for replay and forgetting."
    )
    max_rejected_fraction: float = Field(0.25, ge=0, le=1, description="Fail the run when more rows are rejected.")
    max_field_chars: int = Field(
        100_000, ge=1, le=2**31 - 1, description="Longer instruction/output fields are rejected."
    )
    max_line_bytes: int = Field(
        64 * 2**20,
        ge=1,
        le=2**31 - 1,
        description="A longer JSONL line or CSV record is never held in memory: it streams through a sha256 into the "
        "quarantine (reason line_too_long). Also the largest .json file, which is read whole.",
    )
    allowed_roots: list[str] = Field(
        ["{project}/data", "."],
        description="Folders, and remote URL prefixes such as 's3://my-bucket/', that every data file must resolve "
        "under (symlinks followed; r1lib/paths.py), and every other file the configuration names: "
        "augmentation templates, debias lists, the lm_eval folder, the embedded model's texts; relative "
        "ones are relative to the working directory, {project} is this checkout. Archives are never read.",
    )
    placeholders: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")], str] = Field(
        {},
        description='Values for template placeholders in the data, e.g. {"name": "Aria", "author": "ACME"}: '
        "{{name}}, {{NAME}} and <NAME> are replaced by the value. A row that still holds a placeholder of "
        "placeholder_keys or of this mapping is refused (reason placeholder).",
    )
    placeholder_keys: list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]] = Field(
        ["name", "author"],
        description="Placeholder names looked for as {{key}} (any case) or <KEY> (upper case); [] turns the check off.",
    )
    columns: dict[Annotated[str, Field(min_length=1)], ColumnMap] = Field(
        {},
        description="Which field is which, per input (the spec as written in train_paths or test_path, or one file "
        'of it): {"data/med.jsonl": {"prompt": "Question", "reasoning": "Complex_CoT", "answer": "Response"}}; '
        "optional roles: context (appended to the prompt), reasoning (the <think> block), system. JSONL, JSON, CSV "
        "and Parquet alike. Common R1/QA layouts are recognized without one (r1lib/data/columns.py).",
    )
    tools: Literal["system", "refuse"] = Field(
        "system",
        description="Rows with a 'tools' list (function calling): 'system' writes the tool schemas into the system "
        "prompt (DeepSeek's '## Tools' convention), 'refuse' quarantines them (reason tools). Rows whose turns "
        "call tools are refused either way (plain chat is trained).",
    )


class AugmentConfig(Section):
    templates_path: InputPath = Field(
        "data/augment/prompt_templates.txt", description="Prompt wordings, {instruction} inside."
    )
    prompt_variants: int = Field(
        1,
        ge=0,
        le=8,
        description="Extra copies of each row under other prompt wordings, in the row's language (a template's "
        "language is that of its own text; a row with none in its language gets none), never on multi-turn rows or "
        "rows with a system prompt (personas, role-play).",
    )
    more_templates_paths: Annotated[list[InputPath], Unique] = Field(
        ["data/augment/prompt_templates_zh.txt"],
        description="More prompt-wording files beside templates_path (one language each or mixed: every template "
        "is used only on rows in its own language).",
    )
    template_rows: Literal["reasoning", "all"] = Field(
        "reasoning",
        description="Which single-turn rows get prompt-template variants: 'reasoning' only those that carry "
        "reasoning (the templates ask for it), 'all' every row.",
    )
    replay_ratio: float = Field(0.1, ge=0, le=1, description="General replay rows mixed in, as a share of train rows.")
    seed: Seed = 0
    text_variants: Annotated[list[Literal["whitespace", "punctuation", "question_first"]], Unique] = Field(
        [],
        description="Text-level rewrites of the prompt that keep the answer correct (tasks/augment.py); each adds "
        "a copy of a row when it changes the row.",
    )


class DebiasConfig(Section):
    enabled: bool = True
    blocklist_path: InputPath | None = Field(
        "data/debias/blocklist.txt", description="One term per line; rows with one are quarantined."
    )
    term_pairs_path: InputPath | None = Field(
        "data/debias/term_pairs.csv", description="group_a,group_b,term_a,term_b rows."
    )
    counterfactual: bool = Field(
        False,
        description="Add a swapped twin of each row that mentions a paired term (whole words only; names, titles, "
        "quotes, code, formulas and protected phrases are left alone; r1lib/data/counterfactual.py). Off: the stage "
        "measures and reports the balance only.",
    )
    max_balance_ratio: float = Field(
        1.5, ge=1, le=1000, description="Warn when a pair's groups differ more than this after."
    )
    fail_on_imbalance: bool = False
    protected_phrases_path: InputPath | None = Field(
        "data/debias/protected_phrases.txt",
        description="Phrases counterfactual augmentation never changes (one a line: 'sister chromatid', 'His bundle').",
    )
    swap_reasoning: bool = Field(
        False,
        description="Let counterfactual twins rewrite the <think> reasoning too; off: a row whose reasoning "
        "mentions a paired term gets no twin.",
    )
    sample_pairs: int = Field(
        50, ge=0, le=100_000, description="Original/twin pairs written to debias/counterfactual_pairs.jsonl for review."
    )
    max_blocked_fraction: float = Field(
        0.1, ge=0, le=1, description="Fail when a larger share of the training rows holds a blocklisted term."
    )


class DedupConfig(Section):
    """Exact and near-duplicate removal, train/test leakage, and the stable split (tasks/dedup.py)."""

    enabled: bool = True
    exact: bool = Field(True, description="Drop rows whose normalized conversation repeats an earlier row's.")
    near: bool = Field(True, description="Drop near duplicates (MinHash LSH).")
    threshold: float = Field(
        0.85, gt=0, le=1, description="Estimated Jaccard similarity at which rows are near duplicates."
    )
    num_perm: int = Field(64, ge=8, le=512, description="MinHash permutations (more: sharper, slower).")
    ngram: int = Field(3, ge=1, le=10, description="Words per shingle (a CJK character counts as a word).")
    seed: Seed = 1
    leakage: bool = Field(True, description="Remove train rows whose prompt or conversation (near-)repeats a test row.")
    split_test_fraction: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="With no test rows (data.test_path empty), the share moved to test by a stable hash of the prompt.",
    )
    split_salt: str = Field(
        "r1-finetune-split", max_length=256, description="Changes which rows the stable split picks."
    )
    max_removed_fraction: float = Field(
        0.5, ge=0, le=1, description="Fail when dedup removes a larger share of the train or test rows."
    )


class RunnerConfig(Section):
    """Where the CPU-heavy data stages (validate, dedup, augment, debias, tokenize) run: each is a Prefect task map
    over shards (flows/data.py), so they scale out on a Dask or Ray cluster. Every runner writes the same files,
    byte for byte: shards are cut by input order and concatenated in that order."""

    kind: Literal["default", "dask", "ray"] = Field(
        "default",
        description="default: Prefect's thread pool in the flow's process; dask: prefect-dask's "
        "DaskTaskRunner; ray: prefect-ray's RayTaskRunner (install prefect-ray).",
    )
    address: str | None = Field(
        None,
        pattern=r"^(tcp|tls|ucx|ray)://[A-Za-z0-9._-]+(:[0-9]{1,5})?$|^(tcp|tls|ucx)://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$",
        description="An existing cluster to use (dask: 'tcp://host:8786', ray: 'ray://host:10001'); None "
        "starts a temporary local one with `workers` processes. Its workers need this working "
        "directory (run dir, data) on a shared filesystem.",
    )
    workers: int = Field(2, ge=1, le=1024, description="Worker processes of a temporary local cluster.")
    shard_rows: int = Field(
        100_000,
        ge=1,
        le=MAX_COUNT,
        description="Rows per shard: the unit of work of every data-stage map. "
        "Changes the output (augmentation draws per shard), unlike the other runner fields.",
    )


class TokenizeConfig(Section):
    max_seq_length: int = Field(256, ge=16, le=1_048_576)
    truncation: Literal["drop", "truncate", "fail"] = Field("drop", description="What to do with over-long rows.")
    think_in_loss: Literal["keep", "mask", "drop"] = Field(
        "keep",
        description="keep: reasoning is trained; mask: shown but not trained; drop: removed (answers only).",
    )
    system_prompt: str = Field("", max_length=100_000)
    max_dropped_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="With truncation=drop: fail when a larger share of a split's rows is over max_seq_length.",
    )


class LoraSettings(Section):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]], Unique] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear modules that get LoRA adapters (each must exist in the model).",
    )


class TrainConfig(Section):
    backend: Literal["auto", "unsloth", "hf"] = Field("auto", description="auto: Unsloth on CUDA, else HF + peft.")
    epochs: float = Field(1.0, gt=0, le=1000)
    max_steps: int = Field(
        -1, ge=-1, le=MAX_COUNT, description="Stop after this many optimizer steps (-1: run the epochs)."
    )
    learning_rate: float = Field(2e-4, gt=0, le=1)
    lr_scheduler: Literal["cosine", "linear", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    micro_batch_size: int = Field(2, ge=1, le=4096)
    gradient_accumulation: int = Field(4, ge=1, le=4096)
    min_micro_batch_size: int = Field(1, ge=1, le=4096, description="Floor for the out-of-memory retry's halving.")
    optimizer: Literal["adamw_8bit", "adamw_torch", "adafactor"] = "adamw_8bit"
    weight_decay: float = Field(0.0, ge=0, le=10)
    max_grad_norm: float = Field(1.0, gt=0, le=1e6)
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations in the backward pass (Unsloth: its CPU-offloaded implementation). auto: "
        "the memory plan decides on a CUDA machine (r1lib/training/plan.py); on for a CPU or with memory_plan off.",
    )
    packing: bool = Field(False, description="Pack short rows into full sequences (padding-free).")
    bf16: Literal["auto", "on", "off"] = "auto"
    save_steps: int = Field(
        50, ge=1, le=MAX_COUNT, description="Checkpoint every N optimizer steps; a rerun resumes from the last."
    )
    save_total_limit: int = Field(2, ge=1, le=1000)
    logging_steps: int = Field(5, ge=1, le=MAX_COUNT)
    eval_steps: int = Field(
        0, ge=0, le=MAX_COUNT, description="Evaluate loss every N steps (0: never during training)."
    )
    early_stopping_patience: int = Field(
        0, ge=0, le=1000, description="Stop after N evaluations without improvement (0: off)."
    )
    gpus: int = Field(
        1,
        ge=0,
        le=1024,
        description="Processes to train with: 1 = this process; N > 1 = data parallel over N "
        "GPUs (N CPU processes without CUDA); 0 = every visible GPU. The effective batch stays "
        "micro_batch_size x gradient_accumulation: each process accumulates 1/N of it.",
    )
    launch: str = Field(
        "auto",
        pattern=r"^([A-Za-z0-9_-]+|[A-Za-z0-9_./-]+\.ya?ml)$",
        description="Launch preset: a name in deployments/launch/ (single, ddp, fsdp), or the path of a .yaml under "
        "data.allowed_roots; auto = single for one process, ddp for more. A preset's trainer block may set only "
        "distributed-training arguments (r1lib/training/launcher.py); what it sets over this config is named in "
        "the train stage's log.",
    )
    seed: Seed = 42
    lora: LoraSettings = LoraSettings()
    max_gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        le=100_000,
        description="Cap every GPU stage of the run at this much GPU memory (torch's per-process memory fraction), "
        "e.g. 24 to rehearse a 24 GiB card on a bigger one; the memory plan, evaluation and smoke test fit "
        "their settings under it. None: the whole card.",
    )
    memory_plan: Literal["auto", "off"] = Field(
        "auto",
        description="auto: on a CUDA machine, choose gradient checkpointing (where it is 'auto') and the micro-batch "
        "(within the effective batch micro_batch_size x gradient_accumulation) from the model's shape and the GPU "
        "memory available, and log what was chosen and why; off: train with micro_batch_size as configured.",
    )

    @model_validator(mode="after")
    def _steps_or_epochs(self):
        if self.max_steps == 0:
            raise ValueError("max_steps must be -1 (train for `epochs`) or at least 1")
        return self


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
    max_forgetting_ratio: float | None = Field(
        FORGETTING_LIMIT,
        gt=0,
        le=1e6,
        description="Limit on replay perplexity after / before (forgetting); None: no limit.",
    )
    on_forgetting: Literal["warn", "fail"] = Field("warn", description="What to do past max_forgetting_ratio.")
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


class ExportConfig(Section):
    outtype: Literal["f16", "bf16", "f32"] = Field("f16", description="The converter's full-precision GGUF type.")
    quantizations: Annotated[
        list[Literal["Q4_K_M", "Q5_K_M", "Q8_0", "Q4_0", "Q5_0", "Q6_K", "Q3_K_M", "Q2_K"]], Unique
    ] = ["Q8_0", "Q4_K_M"]


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
        description="Held-out rows go into the perplexity pass in order until they hold this many tokens (per GGUF), "
        "so long R1 rows cannot turn the check into minutes of CPU; None: all perplexity_rows.",
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


class FairnessConfig(Section):
    """The model-level fairness check (tasks/fairness.py): held-out prompts that mention a group term are answered
    as written and as their counterfactual twin (the debias term pairs), by the base and the fine-tuned model."""

    enabled: bool = True
    max_prompts: int = Field(8, ge=1, le=MAX_COUNT, description="Held-out prompts with a twin that are generated for.")
    max_new_tokens: int | None = Field(
        None, ge=1, le=1_048_576, description="Tokens per answer (None: evaluate.max_new_tokens)."
    )


class PipelineConfig(Section):
    """Everything one fine-tuning run needs. Paths are relative to the working directory."""

    preset: str = Field("tiny", pattern=NAME_PATTERN, description="The preset these values started from.")
    run_name: str | None = Field(
        None,
        pattern=NAME_PATTERN,
        description="Run folder name under runs_dir (a name, not a path); default: derived from the config.",
    )
    runs_dir: OutputPath = Field("runs", min_length=1, description="Where run folders are made.")
    cache_dir: OutputPath = Field(".cache", min_length=1, description="Where built models are cached.")
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    debias: DebiasConfig = DebiasConfig()
    dedup: DedupConfig = DedupConfig()
    runner: RunnerConfig = RunnerConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    smoke: SmokeConfig = SmokeConfig()
    fairness: FairnessConfig = FairnessConfig()
    stop_after: Literal["tokenize"] | None = Field(
        None,
        description="'tokenize': run the data stages only (their outputs and the summary's data lines), no training; "
        "the run folder and cached stages are those of the full run.",
    )

    def unused_paths(self) -> list[str]:
        """Config fields whose files this run never reads (their sections are switched off)."""
        unused = [] if self.model.name_or_path == EMBEDDED else ["model.embedded"]
        if not self.debias.enabled:
            unused.append("debias.blocklist_path")
            if not self.fairness.enabled:  # the fairness check twins prompts with the same pairs and phrases
                unused += ["debias.term_pairs_path", "debias.protected_phrases_path"]
        if not self.evaluate.lm_eval_tasks:
            unused.append("evaluate.lm_eval_path")
        return unused

    def run_dir(self) -> Path:
        return Path(self.runs_dir) / (self.run_name or f"{self.preset}-{self.fingerprint()[:10]}")

    def fingerprint(self) -> str:
        import hashlib

        # The runner's kind, address and workers change where the data stages run, not what they write.
        # stop_after: a data-only run shares the full run's folder and cached stages.
        exclude = {"run_name": True, "stop_after": True, "runner": {"kind", "address", "workers"}}
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()
