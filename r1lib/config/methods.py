"""The training method (``train.method``) and each method's own settings, beside it in the train section.

A method is registered in r1lib/training/methods/ (its module builds the TRL trainer); here it gets its name in
``Method`` and, only when it has settings of its own, a section field on ``TrainMethods`` named like the method
(``train.dpo``). SFT has none: it trains with the settings every method shares (``TrainConfig``'s). This module may
not import r1lib.training (the training code reads the configuration, never the other way round).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from r1lib.config.base import Section
from r1lib.paths import InputPath

MAX_TOKENS = 1 << 20

Method = Literal["sft", "dpo", "orpo", "kto", "grpo"]


class DpoSettings(Section):
    """DPO (TRL's DPOTrainer) on preference pairs; the reference policy is the starting policy, held as the base with
    the adapter disabled (no second model in memory)."""

    beta: float = Field(0.1, gt=0, le=100, description="How far the policy may move from the reference (higher: less).")
    loss_type: Literal["sigmoid", "hinge", "ipo", "robust", "sigmoid_norm"] = Field(
        "sigmoid",
        description="sigmoid: the DPO loss; ipo: IPO; hinge: SLiC; robust: robust DPO; sigmoid_norm: "
        "length-normalized DPO.",
    )
    sft_weight: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Weight of an SFT loss (mean negative log-likelihood of the chosen answer's scored tokens) added "
        "to the preference loss (RPO); 0: the preference loss alone. It keeps the chosen answer likely while the "
        "rejected one is pushed down.",
    )


class OrpoSettings(Section):
    """ORPO (TRL's ORPOTrainer): the NLL of the chosen side plus an odds-ratio penalty of the scored tokens' mean
    log-probabilities; no reference policy."""

    beta: float = Field(0.1, gt=0, le=100, description="Weight of the odds-ratio term (the paper's lambda).")
    nll_tokens: Literal["sequence", "scored"] = Field(
        "sequence",
        description="The tokens of the chosen side the NLL term trains. sequence: every token, the prompt and "
        "reasoning shown under think_in_loss=mask included (ORPO's definition, TRL's); scored: only those the "
        "tokenize stage scores (the answer, and the reasoning under think_in_loss=keep), as every other method.",
    )


class KtoSettings(Section):
    """KTO (TRL's KTOTrainer) on answers labelled desirable or not; pairs are split into one of each."""

    beta: float = Field(0.1, gt=0, le=100, description="How far the policy may move from the reference (higher: less).")
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    desirable_weight: float = Field(1.0, gt=0, le=100)
    undesirable_weight: float = Field(1.0, gt=0, le=100)


class RewardWeights(Section):
    """The weight of each GRPO reward (r1lib/training/rewards.py) in the total a completion is ranked by; 0 keeps a
    reward logged in the run's story but out of the ranking."""

    format: float = Field(0.5, ge=0, le=100, description="R1 format: one closed think block, then an answer (0 or 1).")
    correctness: float = Field(
        1.0,
        ge=0,
        le=100,
        description="The answer after </think> equals the reference: exact, numeric or math (0 or 1).",
    )
    overlong: float = Field(
        1.0, ge=0, le=100, description="Soft over-length penalty: 0 up to the buffer, then down to -1 at the limit."
    )


class GrpoSettings(Section):
    """GRPO (TRL's GRPOTrainer) with verifiable rewards: completions sampled from the policy with plain HF generation
    (no vLLM), ranked within their group by the weighted rewards; prompts and reference answers are the tokenize
    stage's rows (the answer after </think>). The reference policy is the starting policy (no second model)."""

    num_generations: int = Field(
        8, ge=2, le=256, description="Completions per prompt (the group). micro_batch_size x gradient_accumulation "
        "(the completions of one optimizer step) must be a multiple of it.",
    )  # fmt: skip
    max_completion_length: int = Field(1024, ge=1, le=MAX_TOKENS, description="New tokens per completion, at most.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1)
    beta: float = Field(
        0.04, ge=0, le=100, description="KL penalty towards the starting policy (0: none, and no reference pass)."
    )
    rollouts: Literal["auto", "recorded", "hf"] = Field(
        "auto",
        description="How completions are sampled. recorded: a preallocated KV cache and the one-token decode step "
        "recorded once as a CUDA graph and replayed (r1lib/model/graph_decode.py; eager on a CPU), with the model in "
        "eval mode (no dropout); hf: the trainer's own HF generate; auto: recorded on a CUDA device, hf elsewhere.",
    )
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = Field(
        "dapo",
        description="grpo: per-sequence length normalization (length-biased); dr_grpo: a constant; dapo: the active "
        "tokens of the accumulated batch; bnpo: those of the micro-batch.",
    )
    rewards: RewardWeights = RewardWeights()
    overlong_buffer: int = Field(
        256, ge=1, le=MAX_TOKENS,
        description="The penalty ramps from 0 to -1 over the last this-many tokens before max_completion_length.",
    )  # fmt: skip
    max_answer_chars: int = Field(
        200, ge=1, le=100_000,
        description="A reference answer longer than this is free text no rule can check: its row is refused.",
    )  # fmt: skip

    def group_split(self, per_step: int) -> str | None:
        """Why ``per_step`` completions per optimizer step split a group (TRL ranks completions within groups inside
        one step's completions), or None when they fill whole groups."""
        if per_step % self.num_generations:
            return (
                f"{per_step} completions per optimizer step is not a multiple of train.grpo.num_generations = "
                f"{self.num_generations}; set the batch to a multiple of it"
            )
        return None

    @model_validator(mode="after")
    def _buffer_inside_the_limit(self):
        if self.overlong_buffer > self.max_completion_length:
            raise ValueError(
                f"train.grpo.overlong_buffer ({self.overlong_buffer}) exceeds train.grpo.max_completion_length "
                f"({self.max_completion_length}); lower the buffer"
            )
        if not any(self.rewards.model_dump().values()):
            raise ValueError("train.grpo.rewards: every weight is 0, so nothing ranks the completions; set one above 0")
        if not (self.rewards.format or self.rewards.correctness):
            raise ValueError(
                "train.grpo.rewards: format and correctness are both 0, so only the over-length penalty ranks the "
                "completions (every one shorter than the buffer scores the same: nothing is learned but brevity); "
                "set format or correctness above 0"
            )
        return self


class TrainMethods(Section):
    """The method field and the methods' own sections; ``TrainConfig`` extends it, so they are ``train.*`` fields."""

    method: Method = Field(
        "sft",
        description="Training method. sft: supervised fine-tuning on the tokenized prompt/answer rows (the loss on the "
        "answer tokens only); dpo, orpo: preference pairs (chosen / rejected); kto: answers labelled desirable or not; "
        "grpo: reinforcement learning on the tokenized rows' prompts, rewarded by checking answers against references. "
        "Each method's own settings, when it has any, are the train section's field of its name.",
    )
    init_adapter: InputPath | None = Field(
        None,
        description="Start from an earlier LoRA adapter instead of a fresh one (e.g. SFT, then a preference method): "
        "an adapter folder, or a run folder (its train/adapter). Its rank and target modules must match train.lora.",
    )
    replay_weight: float = Field(
        1.0,
        ge=0,
        le=100,
        description="dpo, orpo, kto: weight of an SFT loss on general replay rows (data.replay_path, drawn by "
        "augment.replay_ratio) added to every step's preference loss, as many rows as pairs, a guard against "
        "forgetting; 0: none. SFT trains on its replay rows as ordinary rows.",
    )
    dpo: DpoSettings = DpoSettings()
    orpo: OrpoSettings = OrpoSettings()
    kto: KtoSettings = KtoSettings()
    grpo: GrpoSettings = GrpoSettings()

    @property
    def smallest_micro_batch(self) -> int:
        """The least micro-batch the method trains with: KTO's KL term (loss_type kto) pairs each row with another
        row of its micro-batch (TRL refuses one row), so two; else one."""
        return 2 if self.method == "kto" and self.kto.loss_type == "kto" else 1

    @field_validator("init_adapter")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        # a cleared field of the run form arrives as "": a fresh adapter, as None is (not the current folder)
        return value or None
