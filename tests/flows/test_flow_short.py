"""A run shorter than one logging interval (train.max_steps < train.logging_steps) still reports its loss: the loss is
logged at every checkpoint and at the last step (r1lib/training/fit.py), so the summary never lacks one. 60 steps:
enough for the tiny model to learn the R1 format that the smoke test checks (2 steps are not: its GGUF then fails the
smoke test, rightly)."""

import json
from pathlib import Path

import pytest

from r1lib.presets import preset

pytestmark = pytest.mark.slow


def test_a_run_with_fewer_steps_than_the_logging_interval_completes_with_its_summary(prefect_harness, tmp_path):
    from flows.finetune import finetune

    config = preset("tiny")
    config = config.model_validate(
        {
            **config.model_dump(),
            "runs_dir": str(tmp_path),
            "train": {**config.train.model_dump(), "max_steps": 60, "logging_steps": 70, "save_steps": 60},
            "evaluate": {**config.evaluate.model_dump(), "max_examples": 4},
            "export": {**config.export.model_dump(), "quantizations": ["Q8_0"]},
            "fairness": {"max_prompts": 2},
        }
    )
    result = finetune(config)
    trained = result.trained
    assert trained.steps == 60 and trained.first_loss is not None
    assert trained.first_loss == trained.last_loss  # the one loss, logged at the last step
    assert f"loss {trained.first_loss:.3f} -> {trained.last_loss:.3f}" in result.summary.text
    on_disk = json.loads((Path(result.run_dir) / "summary.json").read_text(encoding="utf-8"))
    assert on_disk["train"]["first_loss"] == trained.first_loss and on_disk["fairness"]["prompts"] == 2
