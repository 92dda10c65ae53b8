"""The train section: the settings every training method shares (optimizer, batch, checkpoints, LoRA, launch).

The method (``train.method``) and each method's own settings come from r1lib/config/methods.py, which
``TrainConfig`` extends.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from r1lib.config.base import MAX_COUNT, Section, Seed, Unique
from r1lib.config.methods import TrainMethods


class LoraSettings(Section):
    r: int = Field(16, ge=1, le=1024)
    alpha: int = Field(32, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: Annotated[list[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.]{0,127}$")]], Unique] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear modules that get LoRA adapters (each must exist in the model).",
    )


class TrainConfig(TrainMethods):
    """Settings every training method shares; `method` (first in the form) and the methods' own sections are
    TrainMethods' (r1lib/config/methods.py)."""

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

    @model_validator(mode="after")
    def _kto_pairs_rows_within_a_micro_batch(self):
        # TRL's KTOTrainer refuses a micro-batch of one after the model has loaded: refused here, before any stage
        if self.micro_batch_size < self.smallest_micro_batch:
            raise ValueError(
                f"method kto (loss_type kto): micro_batch_size = {self.micro_batch_size}, but the KL term pairs each "
                "row with another of its micro-batch; set micro_batch_size to 2 or more (gradient_accumulation keeps "
                "the effective batch), or train.kto.loss_type = apo_zero_unpaired"
            )
        return self

    @model_validator(mode="after")
    def _grpo_groups_fill_a_step(self):
        per_step = self.micro_batch_size * self.gradient_accumulation
        if self.method == "grpo" and (why := self.grpo.group_split(per_step)):
            raise ValueError(f"method grpo: micro_batch_size x gradient_accumulation: {why}")
        return self
