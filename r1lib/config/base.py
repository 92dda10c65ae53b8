"""What every configuration section shares: the strict ``Section`` base, the bounds and the name pattern."""

from __future__ import annotations

import sys
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

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

    @field_validator("*", mode="after")
    @classmethod
    def _no_subnormal(cls, value):
        """A subnormal float (``5e-324``) is a typo or an attack, never a setting: each bound above (``gt=0``) lets
        it through, and it reaches the run as a zero that is not one."""
        if isinstance(value, float) and 0 < abs(value) < sys.float_info.min:
            raise ValueError(
                f"{value!r} is a subnormal number (below {sys.float_info.min:.3g}); write 0 or a normal value"
            )
        return value
