"""The data stages' sections: data, augment, debias, dedup, the runner that maps them over shards, and tokenize."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from r1lib.config.base import MAX_COUNT, Section, Seed, Unique
from r1lib.data.columns import ColumnMap
from r1lib.paths import InputPath


class DataConfig(Section):
    train_paths: Annotated[list[Annotated[InputPath, Field(min_length=1)]], Unique] = Field(
        ["data/sample/train.jsonl"],
        min_length=1,
        max_length=10_000,
        description="Training files, folders or globs (at least one, each once).",
    )
    test_path: InputPath = Field("data/sample/test.jsonl", description="Held-out evaluation file; never trained on.")
    holdout_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="With your own train_paths and no test file of yours (test_path empty, or left at the shipped "
        "sample data/sample/test.jsonl), this share of your rows, picked by a stable hash of each prompt "
        "(dedup.split_salt), is the held-out set and never trained on; the summary says so. 0 refuses such a run, "
        "naming data.test_path (r1lib/data/holdout.py).",
    )
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
        description="With no test file of yours, the share moved to test by a stable hash of the prompt; 0: "
        "data.holdout_fraction's share.",
    )
    preference_test_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="In a preference run (train.method dpo, orpo, kto) whose test rows hold no preference pair, the "
        "share of the training pairs held out for preference accuracy, by a stable hash of the prompt (0: none).",
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
