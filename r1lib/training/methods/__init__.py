"""Training methods, by the name ``train.method`` selects. A new method is its module here (a ``METHOD``), its name
and settings in r1lib/config/methods.py, its test, and its line in ``METHODS``."""

from __future__ import annotations

from r1lib.training.methods import dpo, grpo, kto, orpo, sft
from r1lib.training.methods.base import TrainerSpec, TrainingMethod

METHODS: dict[str, TrainingMethod] = {
    "sft": sft.METHOD,
    "dpo": dpo.METHOD,
    "orpo": orpo.METHOD,
    "kto": kto.METHOD,
    "grpo": grpo.METHOD,
}

__all__ = ["METHODS", "TrainerSpec", "TrainingMethod"]
