"""The run folder's layout: ``runs/<run>/<stage>/``. Stages find their own folder here and nowhere else."""

from __future__ import annotations

from pathlib import Path


def stage_dir(run_dir: str | Path, stage: str, *parts: str) -> Path:
    """The folder of ``stage`` in the run folder (or a path inside it); stages write only under their own."""
    return Path(run_dir, stage, *parts)


def run_file(run_dir: str | Path, name: str) -> Path:
    """A file of the whole run, beside the stage folders (``summary.json``)."""
    return Path(run_dir, name)
