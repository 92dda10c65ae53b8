"""The sections of where a run's numbers go: the experiment tracker (``tracking``) and the model registry's home
(``registry``). Neither changes what a run computes, so neither is part of the run folder's fingerprint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from r1lib.config.base import NAME_PATTERN, Section

Tracker = Literal["none", "tensorboard", "mlflow", "trackio", "wandb"]


class TrackingConfig(Section):
    """One tracker run per flow run: the trainer logs the loss to it live (``report_to``), the flow logs the
    configuration (secrets redacted), the data counts, the evaluation, fairness and smoke numbers and the GGUF files."""

    report_to: Tracker = Field(
        "none",
        description="none; tensorboard (event files under uri); mlflow (the server or store at uri); trackio or wandb "
        "(local, offline: nothing leaves the machine).",
    )
    uri: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        description="mlflow: the tracking server (http://127.0.0.1:5000) or store (sqlite:///mlflow.db; default "
        "./mlruns); tensorboard, trackio, wandb: the local folder (default runs/<run>/tracking).",
    )
    experiment: str = Field(
        "r1-finetune", pattern=NAME_PATTERN, description="The experiment (MLflow), project (wandb, trackio)."
    )


class RegistryConfig(Section):
    """Where the nightly's champion/challenger registry lives."""

    backend: Literal["folder", "mlflow"] = Field(
        "folder",
        description="folder: the JSON index in the nightly's registry_dir (embedded, the default); mlflow: also the "
        "MLflow model registry at uri, whose `champion` alias the nightly reads and moves.",
    )
    uri: str | None = Field(
        None, min_length=1, max_length=2048, description="The MLflow registry (default: tracking.uri)."
    )
    model_name: str = Field(
        "r1-finetune", pattern=NAME_PATTERN, description="The registered model's name in the MLflow registry."
    )
