"""When each stage of a run started and ended, which overlapped, and the critical path to the summary.

The flow's task aliases carry ``timed()``'s state hooks: every task run's Running and final states are recorded in
this process (no round trip to the Prefect API, whose task-run records trail the events that fill them). After the
card, ``RunTimeline.of_current_run()`` turns them into the summary's ``timeline`` rows: per stage its start and end
(seconds since the first recorded stage), the pairs of stages that ran at the same time, and the critical path,
walked back from the last stage to end: each step is the stage that ended last before the current one started (the
input it waited for). A stage taken from Prefect's cache never runs: it has no span.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pydantic import BaseModel

from r1lib.stage import StageResult
from r1lib.stages import stage_of_task


class _QuietHooks(logging.Filter):
    """Prefect logs every hook call twice at INFO ("Running hook ...", "Hook ... finished"): not for these two."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'record_stage_" not in record.getMessage() or record.levelno > logging.INFO


logging.getLogger("prefect.task_runs").addFilter(_QuietHooks())
_LOCK = threading.Lock()
_RUNS: dict[str, dict[str, dict[str, Any]]] = {}  # flow run id -> task run id -> {stage, start, end, state}


def _flow_run_id(task_run) -> str:
    return str(getattr(task_run, "flow_run_id", None) or "")


def record_stage_start(task, task_run, state) -> None:
    with _LOCK:
        runs = _RUNS.setdefault(_flow_run_id(task_run), {})
        stage = stage_of_task(task.fn.__name__, task_run.name)
        runs[str(task_run.id)] = {"stage": stage, "start": state.timestamp.timestamp(), "end": None, "state": None}


def record_stage_end(task, task_run, state) -> None:
    with _LOCK:
        entry = _RUNS.get(_flow_run_id(task_run), {}).get(str(task_run.id))
        if entry is not None:  # a task run taken from the cache never ran: no span
            entry.update(end=state.timestamp.timestamp(), state=state.name)


def timed() -> dict[str, list]:
    """Keyword arguments for ``Task.with_options``: record each run's start and end for ``RunTimeline``."""
    return {"on_running": [record_stage_start], "on_completion": [record_stage_end], "on_failure": [record_stage_end]}


class StageSpan(BaseModel):
    stage: str
    start: float  # seconds after the first recorded stage of the run started
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def spans_of(records: list[dict[str, Any]]) -> list[StageSpan]:
    """One span per stage (its first task run's start to its last one's end), in order of start."""
    finished = [r for r in records if r["end"] is not None]
    if not finished:
        return []
    origin = min(r["start"] for r in finished)
    by_stage: dict[str, list[float]] = {}
    for r in finished:
        span = by_stage.setdefault(r["stage"], [r["start"], r["end"]])
        span[0], span[1] = min(span[0], r["start"]), max(span[1], r["end"])
    spans = [StageSpan(stage=s, start=round(a - origin, 2), end=round(b - origin, 2)) for s, (a, b) in by_stage.items()]
    return sorted(spans, key=lambda s: (s.start, s.end))


def overlapping(spans: list[StageSpan], at_least: float = 0.5) -> list[tuple[str, str, float]]:
    """(stage, stage, seconds) for every pair of stages that ran together for ``at_least`` seconds."""
    pairs = []
    for i, a in enumerate(spans):
        for b in spans[i + 1 :]:
            together = min(a.end, b.end) - max(a.start, b.start)
            if together >= at_least:
                pairs.append((a.stage, b.stage, round(together, 2)))
    return pairs


def critical_path(spans: list[StageSpan], slack: float = 1.0) -> list[str]:
    """The chain of stages that decided the end, first to last: from the last stage to end, each time the stage that
    ended last before (within ``slack`` seconds of) the current one's start."""
    if not spans:
        return []
    current = max(spans, key=lambda s: s.end)
    path = [current]
    while True:
        before = [s for s in spans if s.end <= current.start + slack and s is not current and s not in path]
        if not before:
            return [s.stage for s in reversed(path)]
        current = max(before, key=lambda s: s.end)
        path.append(current)


class RunTimeline(StageResult):
    """The run's stage spans, overlaps and critical path (the summary's ``timeline``)."""

    spans: list[StageSpan] = []
    overlaps: list[tuple[str, str, float]] = []
    critical: list[str] = []

    @classmethod
    def of(cls, records: list[dict[str, Any]]) -> RunTimeline:
        spans = spans_of(records)
        return cls(spans=spans, overlaps=overlapping(spans), critical=critical_path(spans))

    @classmethod
    def of_current_run(cls) -> RunTimeline:
        """The timeline recorded so far for the flow run this code runs in."""
        from prefect.runtime import flow_run

        with _LOCK:
            records = [dict(r) for r in _RUNS.get(str(flow_run.id or ""), {}).values()]
        return cls.of(records)

    def summary(self) -> dict[str, Any]:
        return {
            "timeline": {
                "stages": {s.stage: {"start_s": s.start, "end_s": s.end} for s in self.spans},
                "overlapped": [{"stages": [a, b], "seconds": t} for a, b, t in self.overlaps],
                "critical_path": self.critical,
            }
        }

    def summary_lines(self) -> list[tuple[str, str]]:
        if not self.spans:
            return []
        by_stage = {s.stage: s for s in self.spans}
        path = " -> ".join(f"{name} {by_stage[name].seconds:.1f} s" for name in self.critical)
        lines = [("timeline", f"critical path {path}")]
        if self.overlaps:
            shown = ", ".join(f"{a} | {b} {t:.1f} s" for a, b, t in self.overlaps)
            lines.append(("", f"ran together: {shown}"))
        return lines
