"""Configuration: one typed, strict configuration for the whole pipeline, one module per concern.

``PipelineConfig`` is the finetune flow's single parameter, so the Prefect UI renders it as the run form; each stage
reads only its own section. The sections live beside this module by concern: model.py (the base model), data.py (the
data stages), train.py and methods.py (training and the training methods), stages.py (evaluate, export, smoke,
fairness), base.py (what they share). Presets are in r1lib/presets.py. Unknown keys are errors, values are never
coerced (no "yes" for true, no "1e-3" for a number), numbers are finite and bounded, and names are names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from r1lib.config.base import EMBEDDED, FORGETTING_LIMIT, MAX_COUNT, NAME_PATTERN, Section, Seed, Unique
from r1lib.config.data import (
    AugmentConfig,
    DataConfig,
    DebiasConfig,
    DedupConfig,
    RunnerConfig,
    TokenizeConfig,
)
from r1lib.config.methods import Method, TrainMethods
from r1lib.config.model import EmbeddedModelConfig, ModelConfig
from r1lib.config.stages import EvalConfig, ExportConfig, FairnessConfig, SmokeConfig
from r1lib.config.tracking import RegistryConfig, TrackingConfig
from r1lib.config.train import LoraSettings, TrainConfig
from r1lib.paths import OutputPath

__all__ = [
    "EMBEDDED",
    "FORGETTING_LIMIT",
    "MAX_COUNT",
    "NAME_PATTERN",
    "AugmentConfig",
    "DataConfig",
    "DebiasConfig",
    "DedupConfig",
    "EmbeddedModelConfig",
    "EvalConfig",
    "ExportConfig",
    "FairnessConfig",
    "LoraSettings",
    "Method",
    "ModelConfig",
    "PipelineConfig",
    "RegistryConfig",
    "RunnerConfig",
    "Section",
    "Seed",
    "SmokeConfig",
    "TokenizeConfig",
    "TrainConfig",
    "TrackingConfig",
    "TrainMethods",
    "Unique",
]


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
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
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
        # tracking and registry: where the numbers go, not what is computed.
        exclude = {
            "run_name": True,
            "stop_after": True,
            "runner": {"kind", "address", "workers"},
            "tracking": True,
            "registry": True,
        }
        return hashlib.sha256(self.model_dump_json(exclude=exclude).encode()).hexdigest()
