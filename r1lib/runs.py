"""The run folder's layout: ``runs/<run>/<stage>/``. The flow hands each stage its folder, as r1lib/stages.py
declares it (``out_dir``); ``stage_dir`` remains for the train stage, which still finds its own."""

from __future__ import annotations

from pathlib import Path


def stage_dir(run_dir: str | Path, stage: str, *parts: str) -> Path:
    """The folder of ``stage`` in the run folder (or a path inside it); stages write only under their own."""
    return Path(run_dir, stage, *parts)


def run_file(run_dir: str | Path, name: str) -> Path:
    """A file of the whole run, beside the stage folders (``summary.json``)."""
    return Path(run_dir, name)
