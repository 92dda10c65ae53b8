"""The model section: which base model to fine-tune, and the embedded tiny model's shape."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from r1lib.config.base import EMBEDDED, MAX_COUNT, Section, Seed, _no_parent_segment
from r1lib.paths import InputPath


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
