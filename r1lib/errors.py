"""Errors that a retry cannot fix. The Prefect tasks' retry condition fails these at once instead of retrying."""

from __future__ import annotations


class PermanentError(Exception):
    """Bad data, bad configuration or a broken model: retrying the same inputs gives the same failure."""


class DataValidationError(PermanentError):
    pass


class ConfigError(PermanentError):
    pass


class ExportCheckError(PermanentError):
    """A produced artifact failed its check (e.g. a GGUF that answers nothing)."""


class PathNotAllowed(ConfigError):
    """A configured path (or a file a model directory points to) lies outside the allowed roots, or is an archive."""


class RemoteCodeRefused(ConfigError):
    """A model ships Python code (``auto_map``) and ``model.trust_remote_code`` is off: the code is not run."""


class UnsafeWeights(ConfigError):
    """A model's weights exist only as pickle files (which can run code when loaded), or not at all."""


class DiskFull(PermanentError, OSError):
    """No space left on the device (ENOSPC, or the quota: EDQUOT) while writing a named file; its message says how
    much is free. A retry would write into the same full disk."""


class ModelCollapsed(PermanentError):
    """Evaluation saw the fine-tuned model collapse (format compliance to 0, forgetting far past its limit): the run
    stops before export (r1lib/training/collapse.py). ``stage`` is where it was seen."""

    stage = "evaluate"


class TrackerUnavailable(PermanentError):
    """The experiment tracker (``tracking.report_to`` at ``tracking.uri``) could not be opened when the flow started:
    no stage ran. ``stage`` names that step in the failure summary."""

    stage = "tracking"
