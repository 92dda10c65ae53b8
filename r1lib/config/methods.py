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

Method = Literal["sft"]


class TrainMethods(Section):
    """The method field and the methods' own sections; ``TrainConfig`` extends it, so they are ``train.*`` fields."""

    method: Method = Field(
        "sft",
        description="Training method. sft: supervised fine-tuning on the tokenized prompt/answer rows (the loss on the "
        "answer tokens only). Each method's own settings, when it has any, are the train section's field of its name.",
    )
