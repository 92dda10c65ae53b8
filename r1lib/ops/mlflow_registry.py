"""The MLflow model registry as the registry's second home (``registry.backend: mlflow``).

The folder registry (r1lib/ops/registry.py) stays the store of record for the files; with an MLflow home attached,
every change to it is mirrored here as it happens:

- a new version: an MLflow run ``register v<N>`` in the experiment holds its adapter and GGUF files (artifacts) and
  metrics, and a model version of ``registry.model_name`` points at them, tagged with its lineage (folder version,
  data and configuration fingerprints, code version, training paths, run folder, Prefect flow run) and ``status``;
- a promotion moves the ``champion`` alias (the nightly reads the champion from it) and retags the old champion
  ``retired``;
- a rejected challenger stays visible: ``status=rejected`` and the ``reason`` tag;
- a rolled-back registration deletes its model version.

    mlflow models serve -m models:/r1-finetune@champion     # what serves reads the alias (README.md)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from r1lib.errors import ConfigError

CHAMPION = "champion"
TAG_LIMIT = 5000  # characters MLflow keeps of one model-version tag


class MlflowRegistry:
    """One registered model on an MLflow tracking server (or store): versions, the champion alias, lineage tags."""

    def __init__(self, uri: str, model_name: str, experiment: str = "r1-finetune-registry"):
        from mlflow.tracking import MlflowClient

        self.uri, self.name, self.experiment = uri, model_name, experiment
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def _ensure_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            self.client.create_registered_model(
                self.name, description="DeepSeek-R1 fine-tunes of r1-finetune's nightly (adapter + GGUF files)."
            )

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        return found.experiment_id if found else self.client.create_experiment(self.experiment)

    def versions(self) -> list[Any]:
        """Every model version of the registered model, oldest first."""
        found = self.client.search_model_versions(f"name = '{self.name}'")
        return sorted(found, key=lambda v: int(v.version))

    def find(self, number: int) -> Any | None:
        """The model version that mirrors folder version ``number``."""
        return next((v for v in self.versions() if v.tags.get("r1.version") == str(number)), None)

    def add(self, version) -> Any:
        """Mirror a new folder version (an ``r1lib.ops.registry.Version``): its files, metrics and lineage."""
        self._ensure_model()
        run = self.client.create_run(
            self._experiment_id(), run_name=f"register v{version.version}", tags={"r1.version": str(version.version)}
        )
        run_id = run.info.run_id
        if version.adapter and Path(version.adapter).is_dir():
            self.client.log_artifacts(run_id, version.adapter, "model/adapter")
        for gguf in version.ggufs:
            self.client.log_artifact(run_id, gguf.path, "model")
        from mlflow.entities import Metric

        stamp = run.info.start_time
        numbers = [Metric(k, float(v), stamp, 0) for k, v in version.metrics.items() if isinstance(v, (int, float))]
        if numbers:
            self.client.log_batch(run_id, metrics=numbers)
        self.client.set_terminated(run_id, "FINISHED")
        return self.client.create_model_version(
            self.name,
            source=f"{run.info.artifact_uri}/model",
            run_id=run_id,
            tags=lineage_tags(version),
            description=f"folder registry version v{version.version}, created {version.created_at}",
        )

    def set_status(self, number: int, status: str, reason: str | None = None) -> None:
        found = self.find(number)
        if found is None:
            return
        self.client.set_model_version_tag(self.name, found.version, "status", status)
        if reason is not None:
            self.client.set_model_version_tag(self.name, found.version, "reason", reason[:TAG_LIMIT])

    def set_champion(self, number: int | None) -> None:
        """Move the ``champion`` alias to folder version ``number`` (None: no champion); retag the old one."""
        previous = self.champion_number()
        if number is None:
            if previous is not None:
                self.client.delete_registered_model_alias(self.name, CHAMPION)
        else:
            found = self.find(number)
            if found is None:
                raise KeyError(f"no model version of {self.name} mirrors v{number} at {self.uri}")
            self.client.set_registered_model_alias(self.name, CHAMPION, found.version)
            self.client.set_model_version_tag(self.name, found.version, "status", "champion")
        if previous is not None and previous != number:
            self.set_status(previous, "retired")

    def champion_number(self) -> int | None:
        """The folder version the ``champion`` alias points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            found = self.client.get_model_version_by_alias(self.name, CHAMPION)
        except MlflowException:
            return None
        number = found.tags.get("r1.version", "")
        if not number.isdigit():
            raise ConfigError(
                f"MLflow model {self.name!r} at {self.uri}: its {CHAMPION!r} alias points at version {found.version}, "
                f"whose r1.version tag is {number or 'missing'}: not a version this registry registered. Point the "
                "alias at one that is (or remove it)"
            )
        return int(number)

    def remove(self, number: int) -> None:
        """Undo ``add`` (a rolled-back registration)."""
        found = self.find(number)
        if found is not None:
            self.client.delete_model_version(self.name, found.version)


def lineage_tags(version) -> dict[str, str]:
    """What a model version says of where it came from, as MLflow tags (text, at most ``TAG_LIMIT`` each)."""
    tags = {
        "r1.version": str(version.version),
        "status": version.status,
        "data_fingerprint": version.data_fingerprint,
        "code_version": version.code_version,
        "config_fingerprint": version.config_fingerprint,
        "model_dir": version.model_dir,
        "run_dir": version.run_dir,
        "flow_run_id": version.flow_run_id,
        "compared_with": None if version.compared_with is None else f"v{version.compared_with}",
        "train_paths": json.dumps(version.train_paths),
        "drop_files": json.dumps([f.sha256 for f in version.drop_files]),
        "reason": version.decision,
    }
    return {k: str(v)[:TAG_LIMIT] for k, v in tags.items() if v is not None}
