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
