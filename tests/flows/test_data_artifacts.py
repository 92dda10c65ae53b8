"""The data sub-flow (flows/data.py): validation, dedup, bias and tokenization reports land as artifacts."""

import json

import pytest

from r1lib.presets import preset
from tasks.validate import ValidatedData


@pytest.mark.slow  # starts a throwaway Prefect server (~15 s of the run on an idle machine)
def test_data_stages_publish_their_reports_as_artifacts(prefect_harness, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.data import run_data_stages
    from tasks.resolve_model import resolve_model

    config = preset("tiny")
    config.augment.text_variants = ["question_first"]
    config.runner.shard_rows = 500  # several shards per stage
    prepared = run_data_stages(config, resolve_model(config.model, config.cache_dir), str(tmp_path))
    deduped, debiased = prepared.deduped, prepared.debiased
    assert isinstance(prepared.validated, ValidatedData) and deduped.train.endswith("dedup/train.jsonl")
    assert [s.rows for s in deduped.shards["train"]] == [498, 490, 196]  # 1200 rows, 16 dropped by dedup
    # Measured, not rewritten: debias.counterfactual is off by default, so the balance after equals the one before.
    balance = debiased.balance[0]
    assert balance.ratio_before > 1.5 and balance.ratio_after == balance.ratio_before
    assert prepared.train.rows_in == debiased.rows_out and set(prepared.seconds) == {
        "validate",
        "dedup",
        "augment",
        "debias",
        "tokenize",
    }

    keys = ["validation-report", "dedup-report", "bias-report", "debias-summary", "tokenization-audit-train"]
    with get_client(sync_client=True) as client:  # the newest of each key: other tests' runs share the server
        artifacts = {
            a.key: a
            for a in reversed(
                client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)), sort=ArtifactSort.CREATED_DESC
                )
            )
        }
    assert set(artifacts) == set(keys)
    bias = artifacts["bias-report"].data
    bias = json.loads(bias) if isinstance(bias, str) else bias
    assert bias[0]["groups"] == "male/female" and {"ratio_before", "ratio_after"} <= set(bias[0])
    dedup = artifacts["dedup-report"].data
    dedup = json.loads(dedup) if isinstance(dedup, str) else dedup
    assert dedup[0]["train in"] == 1200 and dedup[0]["train out"] < 1200
