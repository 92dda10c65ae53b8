"""The run summary: every stage's key figures in one ``summary.json``, a printed report and a Markdown table.

It knows no stage: each result it is given says what it shows (r1lib/stage.py), so a new stage appears here by
being passed in, in the order r1lib/stages.py declares.
"""

from __future__ import annotations

import contextlib
import logging
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from pydantic import BaseModel

from r1lib.config import PipelineConfig
from r1lib.io import write_json
from r1lib.paths import OutputPath, resolve_roots
from r1lib.stage import StageResult
from r1lib.stages import BY_NAME, STAGES, failed_stage, in_stage_order, stage, stage_of_result

log = logging.getLogger(__name__)
# Where to look when a stage fails without naming a setting: a model that lost its format shows in evaluate and smoke.
LOOK_AT = {
    "train": ["train.learning_rate", "train.micro_batch_size", "train.max_steps"],
    "evaluate": ["train.learning_rate", "train.max_steps"],
    "smoke": ["train.learning_rate", "train.max_steps"],
}


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


def settings_named(text: str) -> list[str]:
    """The configuration settings (``section.field`` of PipelineConfig) a message names, in order, each once."""
    named = []
    for section, field in re.findall(r"\b([a-z_]+)\.([a-z_]+)\b", text):
        info = PipelineConfig.model_fields.get(section)
        model = info.annotation if info else None
        if (
            isinstance(model, type)
            and field in getattr(model, "model_fields", {})
            and f"{section}.{field}" not in named
        ):
            named.append(f"{section}.{field}")
    return named


def failure_rows(config: PipelineConfig, error: BaseException, finished: list[StageResult]) -> dict[str, Any]:
    """What a failed run's summary adds: the stages that finished, the one that failed, its error, and the settings
    to look at (those its message names, else the failed stage's usual suspects and its own section)."""
    name = failed_stage(error)
    try:
        section = stage(name).section if name else None
    except KeyError:
        section = None
    look_at = settings_named(str(error)) or [*LOOK_AT.get(name or "", []), *([f"{section}.*"] if section else [])]
    done = [stage_of_result(r) for r in in_stage_order(finished)]
    if name in BY_NAME and BY_NAME[name].group == "data" and not done:
        # The data stages run one after another inside their sub-flow: every one declared before the failed one ended.
        done = [s.name for s in STAGES[: BY_NAME[name].order] if s.group == "data" and s.folder]
    return {
        "stage": name or "between stages",
        "error": f"{type(error).__name__}: {error}",
        "look_at": look_at,
        "finished": [s for s in dict.fromkeys(done) if s != name],  # a check after a stage fails the stage
    }


def write_failure_summary(
    config: PipelineConfig, run_dir: str, finished: list[StageResult], error: BaseException
) -> RunSummary:
    """summary.json and the printed summary of a run that failed: every stage that finished, then the failed one."""
    data, rows = summarize(config, run_dir, finished)
    data["failed"] = failure_rows(config, error, finished)
    failed = data["failed"]
    rows += [
        ("finished", ", ".join(failed["finished"]) or "no stage"),
        ("FAILED", f"{failed['stage']}: {failed['error']}"),
        ("look at", ", ".join(failed["look_at"]) or "-"),
    ]
    title = f"r1-finetune run summary ({config.preset}: {config.model.name_or_path}): FAILED in {failed['stage']}"
    path = write_json(Path(run_dir, "summary.json"), data)
    text = render(title, rows)
    print(text)
    if FlowRunContext.get() is not None:  # outside a flow run there is nowhere to put an artifact
        create_markdown_artifact(key="run-summary", markdown=render_markdown(title, rows))
    return RunSummary(data=data, text=text, path=str(path))


@contextlib.contextmanager
def summary_on_failure(config: PipelineConfig, run_dir: str) -> Iterator[list[StageResult]]:
    """The list the flow adds each stage result to as it comes; when the block fails, the failure summary is written
    from it (``write_failure_summary``) and the error goes on. A failure while writing it is logged, never raised
    over the run's own error."""
    finished: list[StageResult] = []
    try:
        yield finished
    except Exception as error:
        try:
            write_failure_summary(config, run_dir, finished, error)
        except Exception as writing:
            log.error("could not write the failure summary: %s", writing)
        raise


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
