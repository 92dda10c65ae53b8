"""The session's tiny flow run (tests/conftest.py: tiny_flow_run, also read by test_flow.py) reports to a real local
MLflow server (tests/conftest.py: mlflow_server) with ``tracking.report_to = mlflow``, and scores the shipped lm-eval
task with the think block stripped; every assertion below reads that run. (This used to be a second whole flow.)

Through MlflowClient: one run named like the run folder, the trainer's loss at each logging step, the configuration
as parameters (no planted secret anywhere), the evaluation, lm-eval, fairness, smoke and data numbers as metrics, and
the GGUF files, summary and model card as artifacts; a Prefect link artifact points at the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flows.test_flow import PLANTED_SECRET

pytestmark = pytest.mark.slow
pytest.importorskip("mlflow", reason="the tracking extra: scripts/bootstrap dev,server,tracking,benchmarks")
pytest.importorskip("lm_eval", reason="the benchmarks extra: scripts/bootstrap dev,server,tracking,benchmarks")
TASK_SCORE = "r1_sample_topic/exact_match,none"


@pytest.fixture(scope="module")
def tracked(tiny_flow_run, mlflow_server):
    from mlflow.tracking import MlflowClient

    from tests.conftest import TINY_FLOW_EXPERIMENT

    result = tiny_flow_run
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name(TINY_FLOW_EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], f"tags.`r1.run_dir` = '{result.run_dir}'")
    return result, client, runs


def test_one_finished_mlflow_run_per_flow_run_named_like_its_folder(tracked):
    result, _, runs = tracked
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == Path(result.run_dir).name
    assert run.data.tags["prefect.flow_run_id"]


def test_the_loss_curve_is_the_trainers_per_logging_step(tracked):
    result, client, runs = tracked
    history = [h for h in json.loads(Path(result.trained.log_history).read_text()) if "loss" in h]
    live = client.get_metric_history(runs[0].info.run_id, "loss")  # the trainer's MLflowCallback, as it trained
    assert len(history) >= 5
    assert [(m.step, round(m.value, 4)) for m in live] == [(h["step"], round(h["loss"], 4)) for h in history]
    assert live[-1].value < live[0].value  # it learned


def test_parameters_hold_the_config_and_no_secret(tracked):
    result, client, runs = tracked
    params = runs[0].data.params
    assert params["config/train/max_steps"] == str(result.trained.steps)
    assert params["config/data/placeholders/api_token"] == "<redacted>"
    assert "learning_rate" in params  # the trainer's own arguments, beside the flow's
    everything = json.dumps([params, runs[0].data.tags, runs[0].data.metrics])
    assert PLANTED_SECRET not in everything


def test_evaluation_lm_eval_fairness_smoke_and_data_numbers_are_metrics(tracked):
    result, _, runs = tracked
    metrics, evaluation = runs[0].data.metrics, result.evaluation
    assert metrics["evaluate/accuracy_after"] == evaluation.tuned.accuracy
    assert metrics["evaluate/perplexity_before"] == evaluation.base.perplexity
    assert metrics["metrics/lm_eval/r1_sample_topic/exact_match_none"] == evaluation.tuned.lm_eval[TASK_SCORE]
    assert metrics["metrics/base_lm_eval/r1_sample_topic/exact_match_none"] == evaluation.base.lm_eval[TASK_SCORE]
    assert metrics["data/rows_read"] == result.summary.data["data"]["rows_read"]
    assert "fairness/agreement_after" in metrics or any(k.startswith("fairness/") for k in metrics)
    q8 = next(g for g in result.ggufs if g.type == "Q8_0")
    assert metrics["gguf/Q8_0/mib"] == round(q8.bytes / 2**20, 2)


def test_gguf_files_summary_and_card_are_artifacts(tracked):
    result, client, runs = tracked
    run_id = runs[0].info.run_id
    stored = {Path(a.path).name: a.file_size for a in client.list_artifacts(run_id, "gguf")}
    assert stored == {Path(g.path).name: g.bytes for g in result.ggufs}
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"summary.json", "README.md", "loss_curve.png"} <= top


def test_the_local_lm_eval_task_shows_base_vs_tuned_in_summary_and_card(tracked):
    result, _, _ = tracked
    base, tuned = result.evaluation.base.lm_eval[TASK_SCORE], result.evaluation.tuned.lm_eval[TASK_SCORE]
    assert f"lm_eval {TASK_SCORE} (think block stripped): {base} -> {tuned}" in result.summary.text
    card = Path(result.card.readme).read_text()
    assert f"| lm_eval {TASK_SCORE} |" in card
    print(f"r1_sample_topic exact match, think block stripped: base {base} -> tuned {tuned}")


def test_the_prefect_run_links_to_the_tracker_run(tracked, mlflow_server):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    result, _, runs = tracked

    async def links():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["tracker-run"]))
            )

    found = asyncio.run(links())
    run_id = runs[0].info.run_id
    assert [a for a in found if a.type == "markdown" or run_id in str(a.data)], found
    assert any(f"{mlflow_server}/#/experiments/" in str(a.data) and run_id in str(a.data) for a in found)
