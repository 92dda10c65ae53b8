"""One experiment-tracker run per flow run: the trainer's live loss and the flow's own numbers in the same place.

The flow enters ``tracked_run(config, run_dir)`` once, around its stages, and calls ``tracker.log_run(results,
ggufs)`` before it returns. On entry the tracker run is opened (MLflow: a run in ``tracking.experiment``;
TensorBoard: an event folder), the configuration is logged as parameters with every secret redacted
(``redacted_params``), and a Prefect link artifact points at the run; the trainer finds the same run through the
variables its integration reads (``trainer_environment``: ``MLFLOW_RUN_ID``, ``TENSORBOARD_LOGGING_DIR``, ...), so its
loss per logging step lands there live. ``log_run`` adds every numeric field of the stages' summaries as metrics
(data counts, evaluation, fairness, smoke), the training history, and the GGUF files, summary and card as artifacts
(MLflow). On exit the run is closed FINISHED, or FAILED when the flow raised.

trackio and wandb are handed to the trainer (offline: their files stay under ``tracking.uri``); the flow's own
numbers go to MLflow and TensorBoard only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from r1lib.config import PipelineConfig, TrackingConfig
from r1lib.errors import TrackerUnavailable
from r1lib.process import restored_environ

log = logging.getLogger(__name__)

# Keys whose values are secrets whatever they hold, and values that look like a credential wherever they appear.
SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|api[_-]?key|credential|private_?key|authorization|oauth|cookie"
    r"|(^|[_-])(auth|pass|pw|key|session)($|[_-]))",
    re.IGNORECASE,
)
SECRET_VALUE = re.compile(
    r"(hf_[A-Za-z0-9]{8,}|sk-[A-Za-z0-9_-]{20,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abprs]-[A-Za-z0-9-]{10,}|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}|://[^/\s@]*:[^/\s@]+@"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----|hooks\.slack\.com/services/|discord(app)?\.com/api/webhooks/"
    r"|[?&](token|access_token|sig|signature|x-amz-signature|x-amz-credential|code|key|api_key|apikey)=)",
    re.IGNORECASE,
)
REDACTED = "<redacted>"
PARAM_LIMIT = 6000  # characters MLflow keeps of one parameter value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts and lists as one level of ``a/b/c`` keys (a list item named by its ``type``, else its index)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)) and value and all(isinstance(v, dict) for v in value):
        items = ((str(v.get("type", i)), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, inner in items:
        flat.update(flatten(inner, f"{prefix}/{key}" if prefix else str(key)))
    return flat


def redact(key: str, value: Any) -> Any:
    """``value`` unless its key names a secret or its text looks like a credential."""
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if SECRET_KEY.search(key.rsplit("/", 1)[-1]) or SECRET_VALUE.search(text):
        return REDACTED
    return value


def public_url(url: str | None) -> str | None:
    """``url`` for a log line or an artifact: its user:password part and its query string dropped when it holds a
    credential (a tracking URI may carry both)."""
    if not url or not SECRET_VALUE.search(url):
        return url
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = f"{parts.hostname or ''}:{parts.port}" if parts.port else parts.hostname or ""
    return urlunsplit((parts.scheme, host, parts.path, "", parts.fragment))


def redacted_params(config: PipelineConfig) -> dict[str, str]:
    """The configuration as tracker parameters (``config/<section>/<field>``), every secret replaced."""
    flat = flatten(config.model_dump(mode="json"), "config")
    params = {}
    for key, value in flat.items():
        value = redact(key, value)
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        params[key] = text[:PARAM_LIMIT]
    return params


def numeric_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a summary dict (bools and text left out), flattened, with MLflow-safe names."""
    metrics = {}
    for key, value in flatten(summary).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        metrics[re.sub(r"[^0-9A-Za-z_\-./ :]", "_", key)] = float(value)
    return metrics


def run_label(run_dir: str | Path) -> str:
    """The tracker run's name: the run folder's (``tiny-0123abcd45``), as the Prefect run's name shows it."""
    return Path(run_dir).name


class Tracker:
    """No tracker, or one the flow does not log to itself (trackio, wandb: the trainer's integration does)."""

    name = "none"
    url: str | None = None

    def log_params(self, params: dict[str, str]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        pass

    def close(self, failed: bool) -> None:
        pass

    def log_run(self, results: list, ggufs: list = (), files: list[str | Path] = ()) -> None:
        """Every stage result's numbers, the training history (``train/<key>`` per step), the GGUFs and ``files``."""
        metrics: dict[str, float] = {}
        for result in results:
            metrics.update(numeric_metrics(result.summary()))
            if hasattr(result, "metrics"):  # the figures a registry keeps and a promotion compares
                metrics.update({f"metrics/{k}": v for k, v in numeric_metrics(result.metrics()).items()})
        self.log_metrics(metrics)
        for result in results:
            history = getattr(result, "log_history", None)
            if isinstance(history, str) and Path(history).is_file():
                for entry in json.loads(Path(history).read_text(encoding="utf-8")):
                    step = entry.get("step")
                    numbers = {f"train/{k}": v for k, v in numeric_metrics(entry).items() if k not in ("step",)}
                    if step is not None and numbers:
                        self.log_metrics(numbers, step=int(step))
        for gguf in ggufs:
            self.log_artifact(gguf.path, "gguf")
        for file in files:
            if file and Path(file).is_file():
                self.log_artifact(file, None)


class MlflowTracker(Tracker):
    """A run on an MLflow tracking server or store, through ``MlflowClient`` (no global active run)."""

    name = "mlflow"

    def __init__(self, cfg: TrackingConfig, label: str, tags: dict[str, str]):
        from mlflow.tracking import MlflowClient

        self.uri = cfg.uri or "sqlite:///mlflow.db"
        self.client = MlflowClient(tracking_uri=self.uri)
        experiment = self.client.get_experiment_by_name(cfg.experiment)
        self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(cfg.experiment)
        self.experiment = cfg.experiment
        self.run_id = self.client.create_run(self.experiment_id, run_name=label, tags=tags).info.run_id
        web = self.uri.startswith(("http://", "https://"))
        self.url = f"{self.uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{self.run_id}" if web else None

    def environment(self) -> dict[str, str]:
        return {
            "MLFLOW_TRACKING_URI": self.uri,
            "MLFLOW_EXPERIMENT_NAME": self.experiment,
            "MLFLOW_RUN_ID": self.run_id,
        }

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, v, now, step or 0) for k, v in metrics.items()]
        for start in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[start : start + 1000])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class TensorBoardTracker(Tracker):
    """Event files under ``<uri>/<run>/``: the trainer writes ``train/``, the flow ``flow/`` (two runs side by side
    in TensorBoard: ``tensorboard --logdir <uri>``)."""

    name = "tensorboard"

    def __init__(self, root: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.root = root
        self.writer = SummaryWriter(log_dir=str(root / "flow"))
        self.url = None

    def environment(self) -> dict[str, str]:
        return {"TENSORBOARD_LOGGING_DIR": str(self.root / "train")}

    def log_params(self, params: dict[str, str]) -> None:
        table = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("config", "| parameter | value |\n|---|---|\n" + table)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step or 0)
        self.writer.flush()

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.writer.add_text(f"files/{folder or 'run'}", str(Path(path).resolve()))

    def close(self, failed: bool) -> None:
        self.writer.add_text("status", "FAILED" if failed else "FINISHED")
        self.writer.close()


def offline_environment(cfg: TrackingConfig, root: Path, label: str) -> dict[str, str]:
    """trackio and wandb: local files only, in the project named ``tracking.experiment``."""
    if cfg.report_to == "wandb":
        return {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_PROJECT": cfg.experiment, "WANDB_NAME": label}
    if cfg.report_to == "trackio":
        return {"TRACKIO_DIR": str(root), "TRACKIO_PROJECT": cfg.experiment}
    return {}


def open_tracker(cfg: TrackingConfig, run_dir: Path, tags: dict[str, str]) -> tuple[Tracker, dict[str, str]]:
    """The tracker ``cfg`` names and the environment the trainer's integration reads to find the same run."""
    label = run_label(run_dir)
    root = Path(cfg.uri) if cfg.uri and cfg.report_to != "mlflow" else run_dir / "tracking"
    if cfg.report_to == "mlflow":
        tracker = MlflowTracker(cfg, label, tags)
        return tracker, tracker.environment()
    if cfg.report_to == "tensorboard":
        tracker = TensorBoardTracker(root / label)
        return tracker, tracker.environment()
    return Tracker(), offline_environment(cfg, root, label)


@contextlib.contextmanager
def patched_environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` for the block (the trainer's integrations read them), restored after."""
    with restored_environ(values):
        os.environ.update(values)
        yield


def link_artifact(tracker: Tracker, cfg: TrackingConfig) -> None:
    """A Prefect link artifact to the tracker run (or, without a web address, the command that shows it)."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact
    from prefect.context import get_run_context

    with contextlib.suppress(Exception):
        get_run_context()  # outside a flow run there is no Prefect run to link from
        if tracker.url:
            create_link_artifact(
                key="tracker-run",
                link=public_url(tracker.url),
                link_text=f"{tracker.name} run",
                description="Live metrics",
            )
        elif isinstance(tracker, TensorBoardTracker):
            create_markdown_artifact(
                key="tracker-run", markdown=f"TensorBoard: `tensorboard --logdir {tracker.root.parent}`"
            )
        elif isinstance(tracker, MlflowTracker):
            create_markdown_artifact(
                key="tracker-run",
                markdown=f"MLflow run `{tracker.run_id}`: `mlflow ui --backend-store-uri {public_url(tracker.uri)}`",
            )


def unavailable(cfg: TrackingConfig, exc: Exception) -> TrackerUnavailable:
    """The error of a tracker that could not be opened: the setting, its address without credentials, the cause."""
    where = public_url(cfg.uri) if cfg.uri else "its default"
    cause = f"{type(exc).__name__}: {exc}"
    if cfg.uri and where != cfg.uri:
        cause = cause.replace(cfg.uri, where)
    return TrackerUnavailable(
        f"the {cfg.report_to} tracker at tracking.uri={where} could not be opened ({cause[:300]}); make it "
        "reachable, correct tracking.uri, or set tracking.report_to=none"
    )


@contextlib.contextmanager
def tracked_run(config: PipelineConfig, run_dir: str | Path) -> Iterator[Tracker]:
    """Open the tracker run for this flow run, hand the trainer its environment, close the run on exit."""
    cfg = config.tracking
    if cfg.report_to == "none":
        yield Tracker()
        return
    tags = {"r1.run_dir": str(run_dir), "r1.preset": config.preset, "r1.config_fingerprint": config.fingerprint()}
    with contextlib.suppress(Exception):
        from prefect.runtime import flow_run

        if flow_run.id:
            tags["prefect.flow_run_id"] = str(flow_run.id)
    tracker = None
    try:
        tracker, environment = open_tracker(cfg, Path(run_dir), tags)
        tracker.log_params(redacted_params(config))
    except Exception as exc:
        if tracker is not None:
            with contextlib.suppress(Exception):
                tracker.close(failed=True)
        raise unavailable(cfg, exc) from exc
    link_artifact(tracker, cfg)
    shown = public_url(tracker.url) or {key: redact(key, public_url(value)) for key, value in environment.items()}
    log.info("tracking: %s run %s", tracker.name, shown)
    failed = True
    try:
        with patched_environ(environment):
            yield tracker
        failed = False
    finally:
        tracker.close(failed)
