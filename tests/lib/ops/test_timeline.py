"""The run summary's timeline: stage spans from the recorded task runs, the stages that ran together, and the
critical path walked back from the last stage to end."""

from __future__ import annotations

from r1lib.ops.timeline import RunTimeline, critical_path, overlapping, spans_of


def record(stage: str, start: float, end: float | None) -> dict:
    return {"stage": stage, "start": 1000 + start, "end": None if end is None else 1000 + end, "state": "Completed"}


# After training: the export branch (merge -> convert -> two quantize children) beside evaluate -> fairness.
OVERLAPPED = [
    record("train", 0, 50),
    record("merge", 51, 68),
    record("evaluate", 51, 96),
    record("convert", 68, 120),
    record("fairness", 96, 110),
    record("quantize Q8_0", 120, 150),
    record("quantize Q4_K_M", 120, 170),
    record("smoke", 171, 200),
    record("card", 200, 203),
]


def test_the_critical_path_follows_the_inputs_each_stage_waited_for():
    spans = spans_of(OVERLAPPED)
    assert critical_path(spans) == ["train", "merge", "convert", "quantize Q4_K_M", "smoke", "card"]


def test_stages_that_ran_together_are_named_with_their_shared_seconds():
    pairs = {(a, b): t for a, b, t in overlapping(spans_of(OVERLAPPED))}
    assert pairs[("merge", "evaluate")] == 17 and pairs[("evaluate", "convert")] == 28
    assert pairs[("quantize Q8_0", "quantize Q4_K_M")] == 30
    assert ("train", "merge") not in pairs and ("smoke", "card") not in pairs  # back to back is not together


def test_a_stage_from_the_cache_has_no_span_and_a_serial_run_has_no_overlap():
    serial = [record("train", 0, 10), record("evaluate", 10, 20), record("merge", 20, 25), record("smoke", 25, None)]
    timeline = RunTimeline.of(serial)
    assert [s.stage for s in timeline.spans] == ["train", "evaluate", "merge"] and not timeline.overlaps
    assert timeline.critical == ["train", "evaluate", "merge"]
    assert timeline.summary()["timeline"]["stages"]["merge"] == {"start_s": 20.0, "end_s": 25.0}
    assert timeline.summary_lines()[0] == ("timeline", "critical path train 10.0 s -> evaluate 10.0 s -> merge 5.0 s")


def test_the_recording_hooks_add_no_log_lines(caplog):
    import logging

    from r1lib.ops.timeline import timed

    hooks = timed()
    assert [h.__name__ for h in hooks["on_running"] + hooks["on_completion"]] == [
        "record_stage_start",
        "record_stage_end",
    ]
    logger = logging.getLogger("prefect.task_runs")
    with caplog.at_level(logging.INFO, logger="prefect.task_runs"):
        logger.info("Running hook 'record_stage_start' in response to entering state 'Running'")
        logger.info("Hook 'record_stage_end' finished running successfully")
        logger.info("Running hook 'notify' in response to entering state 'Completed'")
    assert [r.getMessage() for r in caplog.records] == [
        "Running hook 'notify' in response to entering state 'Completed'"
    ]
