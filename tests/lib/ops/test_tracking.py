"""The experiment tracker (r1lib/ops/tracking.py): secrets never reach it, the trainer logs its loss to the run the
flow opened (TensorBoard event files, one point per logging step), and an MLflow run on a real server holds the
configuration and is closed FINISHED or FAILED."""

from __future__ import annotations

import json

import pytest

from r1lib.ops.tracking import REDACTED, public_url, redact

TOKEN = "hf_abcdefGHIJKLmnopqrSTUVwxyz0123456789"  # a hub token's shape
AWS = "AKIAABCDEFGHIJKLMNOP"


def config_with_secrets(**changes):
    from r1lib.presets import preset

    config = preset("tiny")
    data = config.data.model_copy(update={"placeholders": {"author": "ACME", "hub_token": "plain", "key_id": AWS}})
    data = data.model_copy(update={"placeholders": {**data.placeholders, "note": f"use {TOKEN} here"}})
    return config.model_copy(update={"data": data, **changes})


def test_the_configuration_reaches_the_tracker_with_every_secret_redacted():
    from r1lib.ops.tracking import REDACTED, redacted_params

    params = redacted_params(config_with_secrets())
    text = json.dumps(params)
    assert TOKEN not in text and AWS not in text
    assert params["config/data/placeholders/note"] == REDACTED  # a token-looking value, whatever its key
    assert params["config/data/placeholders/hub_token"] == REDACTED  # a key that names a secret, whatever its value
    assert params["config/data/placeholders/author"] == "ACME"
    assert params["config/train/learning_rate"] == str(config_with_secrets().train.learning_rate)
    assert json.loads(params["config/data/train_paths"]) == config_with_secrets().data.train_paths


def test_credentials_inside_a_url_are_redacted_and_plain_urls_are_kept():
    from r1lib.ops.tracking import REDACTED, redact

    assert redact("config/data/url", "s3://user:pa55word@bucket/x.jsonl") == REDACTED
    assert redact("config/data/url", "s3://bucket/x.jsonl") == "s3://bucket/x.jsonl"


def test_a_summary_becomes_metrics_by_path_with_text_and_flags_left_out():
    from r1lib.ops.tracking import numeric_metrics

    summary = {
        "evaluate": {"accuracy_after": 0.5, "stopped_by_time_limit": False, "decoding": {"temperature": 0.0}},
        "gguf": [{"type": "Q8_0", "mib": 18.4, "path": "x.gguf"}],
        "data": {"rows_read": 10, "quarantine": "q.jsonl", "nan": float("nan")},
    }
    assert numeric_metrics(summary) == {
        "evaluate/accuracy_after": 0.5,
        "evaluate/decoding/temperature": 0.0,
        "gguf/Q8_0/mib": 18.4,
        "data/rows_read": 10.0,
    }


def test_tracking_changes_where_numbers_go_not_the_run_folder():
    from r1lib.presets import preset

    config = preset("tiny")
    tracked = config.model_copy(update={"tracking": config.tracking.model_copy(update={"report_to": "mlflow"})})
    assert tracked.run_dir() == config.run_dir()


@pytest.mark.slow
def test_the_trainer_writes_its_loss_per_logging_step_to_tensorboard(small_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from r1lib.config import TrackingConfig, TrainConfig
    from r1lib.ops.tracking import tracked_run
    from r1lib.presets import preset
    from tasks.resolve_model import resolve_model
    from tasks.train import train

    config = preset("tiny")
    config = config.model_copy(update={"tracking": TrackingConfig(report_to="tensorboard", uri=str(tmp_path / "tb"))})
    train_cfg = TrainConfig(**{**config.train.model_dump(), "max_steps": 4, "save_steps": 4, "logging_steps": 1})
    model_dir = resolve_model(config.model, config.cache_dir)
    run_dir = tmp_path / "runs" / "tb-run"
    with tracked_run(config, run_dir) as tracker:
        result = train(
            small_dataset, None, model_dir, config.model, train_cfg, config.tokenize, run_dir / "train",
            tracking_cfg=config.tracking,
        )  # fmt: skip
        tracker.log_run([result])
    trainer_events = EventAccumulator(str(tmp_path / "tb" / "tb-run" / "train")).Reload()
    losses = trainer_events.Scalars("train/loss")
    history = [h for h in json.loads((run_dir / "train" / "log_history.json").read_text()) if "loss" in h]
    assert [e.step for e in losses] == [1, 2, 3, 4] == [h["step"] for h in history]
    assert [round(e.value, 4) for e in losses] == [round(h["loss"], 4) for h in history]
    flow_events = EventAccumulator(str(tmp_path / "tb" / "tb-run" / "flow")).Reload()
    assert [e.step for e in flow_events.Scalars("train/loss")] == [1, 2, 3, 4]
    assert "config" in " ".join(flow_events.Tags()["tensors"])


@pytest.mark.server
def test_an_mlflow_run_holds_the_redacted_config_and_closes_finished_or_failed(mlflow_server, tmp_path):
    import os

    from mlflow.tracking import MlflowClient

    from r1lib.config import TrackingConfig
    from r1lib.ops.tracking import tracked_run

    config = config_with_secrets(tracking=TrackingConfig(report_to="mlflow", uri=mlflow_server, experiment="unit"))
    with tracked_run(config, tmp_path / "runs" / "ok-run") as tracker:
        assert os.environ["MLFLOW_RUN_ID"] == tracker.run_id  # what the trainer's MLflowCallback resumes
        tracker.log_metrics({"evaluate/accuracy_after": 0.75})
        (tmp_path / "model.gguf").write_bytes(b"GGUF")
        tracker.log_artifact(tmp_path / "model.gguf", "gguf")
    assert "MLFLOW_RUN_ID" not in os.environ
    client = MlflowClient(mlflow_server)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "ok-run"
    assert run.data.metrics["evaluate/accuracy_after"] == 0.75
    assert run.data.params["config/data/placeholders/author"] == "ACME"
    assert not [k for k, v in run.data.params.items() if TOKEN in v or AWS in v]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "gguf")] == ["gguf/model.gguf"]
    assert tracker.url == f"{mlflow_server}/#/experiments/{run.info.experiment_id}/runs/{tracker.run_id}"

    with pytest.raises(RuntimeError, match="stage failed"), tracked_run(config, tmp_path / "runs" / "bad") as failed:
        raise RuntimeError("stage failed")
    assert client.get_run(failed.run_id).info.status == "FAILED"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("url", "https://h.example/x?token=abc123"),
        ("url", "https://acct.blob.core.windows.net/c/f?sv=2024&sig=abcdef"),
        ("hook", "https://hooks.slack.com/services/T000/B000/XXXX"),
        ("hook", "https://discord.com/api/webhooks/1/abc"),
        ("token_like", "github_pat_11ABCDEFG0123456789_abcdefghij"),
        ("short_hf", "hf_abcdefgh12"),
        ("pem", "-----BEGIN RSA PRIVATE KEY-----\nMIIB"),
        ("url", "https://:pw@host.example/"),
        ("api-key", "plain"),
        ("pw", "plain"),
        ("session_cookie", "plain"),
    ],
)
def test_credential_shapes_found_by_an_outside_attack_are_redacted(key, value):
    assert redact(key, value) == REDACTED


def test_the_tracker_link_and_log_line_drop_a_uris_credentials():
    assert public_url("https://alice:S3cret@mlflow.example.com:5000/#/runs/abc") == (
        "https://mlflow.example.com:5000/#/runs/abc"
    )
    assert public_url("postgresql://u:pw@db/mlflow") == "postgresql://db/mlflow"
    assert public_url("http://127.0.0.1:5000/#/experiments/1") == "http://127.0.0.1:5000/#/experiments/1"
    assert redact("keep_full_precision", True) is True  # a key is a word of the name, not a substring
