"""The training method (``train.method``) and each method's own settings, beside it in the train section.

A method is registered in r1lib/training/methods/ (its module builds the TRL trainer); here it gets its name in
``Method`` and, only when it has settings of its own, a section field on ``TrainMethods`` named like the method
(``train.dpo``). SFT has none: it trains with the settings every method shares (``TrainConfig``'s). This module may
not import r1lib.training (the training code reads the configuration, never the other way round).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from r1lib.config.base import Section
from r1lib.paths import InputPath

Method = Literal["sft", "dpo", "orpo", "kto"]


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
    """ORPO (TRL's ORPOTrainer): the SFT loss on the chosen answer plus an odds-ratio penalty; no reference policy."""

    beta: float = Field(0.1, gt=0, le=100, description="Weight of the odds-ratio term (the paper's lambda).")


class KtoSettings(Section):
    """KTO (TRL's KTOTrainer) on answers labelled desirable or not; pairs are split into one of each."""

    beta: float = Field(0.1, gt=0, le=100, description="How far the policy may move from the reference (higher: less).")
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"
    desirable_weight: float = Field(1.0, gt=0, le=100)
    undesirable_weight: float = Field(1.0, gt=0, le=100)


class TrainMethods(Section):
    """The method field and the methods' own sections; ``TrainConfig`` extends it, so they are ``train.*`` fields."""

    method: Method = Field(
        "sft",
        description="Training method. sft: supervised fine-tuning on the tokenized prompt/answer rows (the loss on the "
        "answer tokens only); dpo, orpo: preference pairs (chosen / rejected); kto: answers labelled desirable or not. "
        "Each method's own settings, when it has any, are the train section's field of its name.",
    )
    init_adapter: InputPath | None = Field(
        None,
        description="Start from an earlier LoRA adapter instead of a fresh one (e.g. SFT, then a preference method): "
        "an adapter folder, or a run folder (its train/adapter). Its rank and target modules must match train.lora.",
    )
    dpo: DpoSettings = DpoSettings()
    orpo: OrpoSettings = OrpoSettings()
    kto: KtoSettings = KtoSettings()
