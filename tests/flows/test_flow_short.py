"""A run shorter than one logging interval (train.max_steps < train.logging_steps) still reports its loss: the loss is
logged at every checkpoint and at the last step (r1lib/training/fit.py), so the summary never lacks one.

The run is the session's tiny whole-flow run (tests/conftest.py: tiny_flow_run, shared with test_flow.py): the tiny
preset with 60 of its 90 steps, logging_steps 100 and one checkpoint at the last step. Enough steps for the tiny model
to learn the R1 format that the smoke test checks (2 steps are not: its GGUF then fails the smoke test, rightly)."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_a_run_with_fewer_steps_than_the_logging_interval_completes_with_its_summary(tiny_flow_run):
    from tests.conftest import TINY_FLOW_LOGGING_STEPS

    result = tiny_flow_run
    trained = result.trained
    assert 0 < trained.steps < TINY_FLOW_LOGGING_STEPS and trained.first_loss is not None
    assert trained.first_loss == trained.last_loss  # the one loss, logged at the last step
    assert f"loss {trained.first_loss:.3f} -> {trained.last_loss:.3f}" in result.summary.text
    on_disk = json.loads((Path(result.run_dir) / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["train"]["first_loss"] == trained.first_loss
    assert on_disk["fairness"]["prompts"] == result.summary.data["fairness"]["prompts"] > 0
