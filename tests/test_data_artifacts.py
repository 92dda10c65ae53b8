"""The data stages as Prefect tasks in one flow: validation, dedup and bias reports land as artifacts."""

import json

import pytest

from prefect import flow

from tasks.augment import augment_task
from tasks.config import AugmentConfig, DataConfig, DebiasConfig, DedupConfig
from tasks.debias import debias_task
from tasks.dedup import dedup_task
from tasks.validate import ValidatedData, validate_task


@pytest.mark.slow  # starts a throwaway Prefect server (~15 s of the run on an idle machine)
def test_data_stages_publish_their_reports_as_artifacts(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    @flow
    def data_stages(run: str):
        data = validate_task(DataConfig(), run)
        data = dedup_task(data, DedupConfig(), run)  # the line flows/finetune.py has
        augmented = augment_task(data.train, data.replay, AugmentConfig(text_variants=["question_first"]), run)
        return data, debias_task(augmented.train, DebiasConfig(), run)

    data, debiased = data_stages(str(tmp_path))
    assert isinstance(data, ValidatedData) and data.train.endswith("dedup/train.jsonl")
    assert debiased.balance[0].ratio_before > 1.5 >= debiased.balance[0].ratio_after

    with get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["validation-report", "dedup-report",
                                                                      "bias-report", "debias-summary"])))}
    assert set(artifacts) == {"validation-report", "dedup-report", "bias-report", "debias-summary"}
    bias = artifacts["bias-report"].data
    bias = json.loads(bias) if isinstance(bias, str) else bias
    assert bias[0]["groups"] == "male/female" and {"ratio_before", "ratio_after"} <= set(bias[0])
    dedup = artifacts["dedup-report"].data
    dedup = json.loads(dedup) if isinstance(dedup, str) else dedup
    assert dedup[0]["train in"] == 1200 and dedup[0]["train out"] < 1200
