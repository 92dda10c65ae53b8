"""The run summary: every stage's key figures in one ``summary.json``, a printed report and a Markdown table.

It knows no stage: each result it is given says what it shows (r1lib/stage.py), so a new stage appears here by
being passed in, in the order r1lib/stages.py declares.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from r1lib.config import PipelineConfig
from r1lib.io import write_json
from r1lib.paths import OutputPath, resolve_roots
from r1lib.stage import StageResult
from r1lib.stages import in_stage_order


class RunSummary(BaseModel):
    """What ``summary.json`` holds, and the same as text."""

    data: dict[str, Any]
    text: str
    path: str


def summarize(config: PipelineConfig, run_dir: str, results: list[StageResult]) -> tuple[dict, list[tuple[str, str]]]:
    """(the summary.json content, the report's rows) of a run whose stages returned ``results``."""
    roots = {"data": resolve_roots(config.data.allowed_roots), "model": resolve_roots(config.model.allowed_roots)}
    data: dict[str, Any] = {
        "preset": config.preset,
        "model": config.model.name_or_path,
        "trust_remote_code": config.model.trust_remote_code,
        # the roots in force, as this machine resolved them ({project}, {hf_cache} filled in)
        "allowed_roots": roots,
        "run_dir": run_dir,
    }
    rows = [("roots", f"data {', '.join(roots['data'])}; model {', '.join(roots['model'])}")]
    for result in in_stage_order(results):
        data.update(result.summary())
        rows += result.summary_lines()
    return data, rows


def render(title: str, rows: list[tuple[str, str]]) -> str:
    """The report for the terminal."""
    return "\n".join([title, *(f"  {label:10} {text}" for label, text in rows)])


def render_markdown(title: str, rows: list[tuple[str, str]]) -> str:
    """The report as a Markdown table (the run's artifact in the Prefect UI)."""
    pipe = "\\|"  # a literal | inside a cell
    cells = [f"| {label} | {text.replace('|', pipe)} |" for label, text in rows]
    return "\n".join([f"**{title}**", "", "| stage | result |", "|---|---|", *cells])


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="summary", task_run_name="run summary")
def summary_task(config: PipelineConfig, run_dir: OutputPath, results: list[StageResult]) -> RunSummary:
    """Write summary.json and show the summary in the UI."""
    data, rows = summarize(config, run_dir, results)
    title = f"r1-finetune run summary ({config.preset}: {config.model.name_or_path})"
    path = write_json(Path(run_dir, "summary.json"), data)
    # The UI never wraps a table cell: long rows become lines of at most 72 characters.
    lines = [(label, "<br>".join(textwrap.wrap(text, 72, break_on_hyphens=False))) for label, text in rows]
    create_markdown_artifact(key="run-summary", markdown=render_markdown(title, lines))
    return RunSummary(data=data, text=render(title, rows), path=str(path))
