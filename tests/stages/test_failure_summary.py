"""A failed run tells its story: summary.json and the printed summary hold every stage that finished, the one that
failed (from the error's own stage, else the stage code it came from), its error, and the settings to look at."""

import json

import pytest
from conftest import r1

from r1lib.config import SmokeConfig, TokenizeConfig
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from r1lib.errors import DataValidationError, ExportCheckError, ModelCollapsed
from r1lib.export.gguf import GGUFFile
from r1lib.io import write_jsonl
from r1lib.ops.tracking import tracked_run
from r1lib.presets import preset
from r1lib.stages import failed_stage
from r1lib.training.collapse import collapse_check
from tasks.smoke import _checked
from tasks.summary import settings_named, summary_on_failure
from tasks.tokenize import tokenize_file
from tests.lib.training.test_collapse import evaluation, scores

TINY = preset("tiny")


def run_failing(tmp_path, finished_before: list, fail) -> dict:
    with pytest.raises(Exception) as info, summary_on_failure(TINY, str(tmp_path)) as finished:
        finished += finished_before
        fail()
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert summary["failed"]["error"].startswith(type(info.value).__name__)
    return summary


def test_a_collapse_seen_by_evaluation_is_the_failed_stage_and_names_the_learning_rate(tmp_path, capsys):
    collapsed = evaluation(scores(0.78, 1.47), scores(0.0, 690.9))
    summary = run_failing(tmp_path, [collapsed], lambda: collapse_check(collapsed, TINY, steps=5))
    failed = summary["failed"]
    assert failed["stage"] == "evaluate" and failed["finished"] == []  # its numbers are shown, the stage failed
    assert failed["look_at"][0] == "train.learning_rate" and "train.max_steps" in failed["look_at"]
    assert summary["evaluate"]["format_ok_after"] == 0.0  # the finished stage's own numbers are kept
    printed = capsys.readouterr().out
    assert "FAILED in evaluate" in printed and "forgetting 470x" in printed and "look at" in printed


def test_a_data_stage_failure_names_its_stage_and_the_settings_its_message_names(tokenizer, tmp_path):
    row = make_record(normalize({"instruction": "Count.", "output": r1(" ".join(map(str, range(300))), "300")}),
                      "rows.jsonl", 1)  # fmt: skip
    write_jsonl(tmp_path / "rows.jsonl", [row])
    summary = run_failing(
        tmp_path,
        [],
        lambda: tokenize_file(
            tokenizer, tmp_path / "rows.jsonl", TokenizeConfig(max_seq_length=64), tmp_path / "out"
        ),  # fmt: skip
    )
    failed = summary["failed"]
    assert failed["stage"] == "tokenize" and failed["finished"] == ["validate", "dedup", "augment", "debias"]
    assert {"tokenize.max_seq_length", "tokenize.truncation"} <= set(summary["failed"]["look_at"])


def test_a_smoke_failure_without_a_setting_in_its_message_points_at_the_training_settings(tmp_path):
    output = " while. The The The The"
    data = {"load_seconds": 0.1, "tokens_per_second": 9.0, "bos_count": 1, "outputs": [output], "token_ids": [[1]]}
    gguf = GGUFFile(path=str(tmp_path / "m-F16.gguf"), type="F16", bytes=1)
    summary = run_failing(tmp_path, [], lambda: _checked(gguf, data, SmokeConfig(), None))
    assert summary["failed"]["stage"] == "smoke" and "no closed <think> block" in summary["failed"]["error"]
    assert summary["failed"]["finished"] == []  # no result was handed over
    assert summary["failed"]["look_at"] == ["train.learning_rate", "train.max_steps", "smoke.*"]


def test_an_error_of_no_stage_is_said_to_be_between_stages():
    assert failed_stage(ValueError("x")) is None and failed_stage(ModelCollapsed("x")) == "evaluate"
    assert failed_stage(ExportCheckError("x")) is None and isinstance(DataValidationError("x"), Exception)


def test_an_error_in_the_flow_body_outside_any_stage_is_between_stages_not_in_the_summary(tmp_path):
    def flow_body():
        raise ValueError("raised by the flow itself")

    assert run_failing(tmp_path, [], flow_body)["failed"]["stage"] == "between stages"


def test_a_tracker_that_cannot_be_opened_is_the_failed_step_and_names_tracking_uri(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # refused at once, not after MLflow's backoff
    tracking = TINY.tracking.model_copy(update={"report_to": "mlflow", "uri": "http://alice:S3cret@127.0.0.1:9"})
    config = TINY.model_copy(update={"tracking": tracking})

    def open_tracker():
        with tracked_run(config, tmp_path):
            pass

    failed = run_failing(tmp_path, [], open_tracker)["failed"]
    assert failed["stage"] == "tracking" and failed["error"].startswith("TrackerUnavailable: the mlflow tracker")
    assert failed["look_at"][0] == "tracking.uri" and "http://127.0.0.1:9" in failed["error"]
    printed = capsys.readouterr().out
    assert "FAILED in tracking" in printed
    assert "S3cret" not in printed + (tmp_path / "summary.json").read_text(encoding="utf-8")


def test_settings_named_reads_real_settings_only():
    text = "raise data.max_rejected_fraction or tokenize.truncation; see runs/x.jsonl, r1lib.data and train.nope"
    assert settings_named(text) == ["data.max_rejected_fraction", "tokenize.truncation"]
