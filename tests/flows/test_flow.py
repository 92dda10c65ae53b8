"""The whole DAG on the embedded tiny model, with the deliberately broken file mixed into the training data."""

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
BROKEN = "data/sample/broken.jsonl"
PLANTED_SECRET = "hf_PLANTEDsecretTOKENthatMUSTnotLEAK42"


@pytest.fixture(scope="module")
def summary(tiny_flow_run):
    """The session's tiny whole-flow run (tests/conftest.py: tiny_flow_run, shared with test_tracking_flow.py)."""
    return tiny_flow_run.summary.data


def test_every_broken_row_is_quarantined_with_a_reason_and_none_is_lost(summary):
    broken = summary["data"]["per_file"][BROKEN]
    lines = [line for line in open(BROKEN, encoding="utf-8") if line.strip()]
    assert broken["accepted"] + broken["quarantined"] == len(lines)
    assert broken["accepted"] == 2
    quarantine = [json.loads(line) for line in open(summary["data"]["quarantine"], encoding="utf-8")]
    from_broken = [q for q in quarantine if q["file"] == BROKEN]
    assert len(from_broken) == broken["quarantined"] == 12
    assert all(q["reason"] and q["line"] for q in from_broken)


def test_perplexity_falls_by_half_and_accuracy_rises(summary):
    ev = summary["evaluate"]
    assert ev["perplexity_after"] < ev["perplexity_before"] / 2
    assert ev["accuracy_after"] >= ev["accuracy_before"] + 0.4
    assert ev["format_ok_after"] >= 0.9


def test_ggufs_load_and_answer_in_the_r1_format(summary):
    types = {g["type"] for g in summary["gguf"]}
    assert {"F16", "Q8_0", "Q4_K_M"} <= types
    for gguf in summary["gguf"]:
        assert Path(gguf["path"]).stat().st_size > 1_000_000
        assert gguf["smoke_answer"], gguf  # a non-empty answer after a closed </think>
        assert gguf["smoke_tokens_per_second"] > 0
    smoke = json.loads((Path(summary["run_dir"]) / "smoke" / "smoke.json").read_text())
    assert all(r["bos_count"] == 1 for r in smoke["results"])
    assert smoke["parity_matching"] == smoke["parity_tokens"] > 0


def test_converter_identifies_the_tokenizer_as_deepseek_r1_qwen(summary):
    from r1lib.export.gguf import gguf_metadata

    f16 = next(g for g in summary["gguf"] if g["type"] == "F16")
    assert gguf_metadata(Path(f16["path"]), "tokenizer.ggml.pre") == "deepseek-r1-qwen"


def test_debias_measures_the_gendered_terms_and_rewrites_nothing(summary):
    # Counterfactual twins are off by default (tests/stages/test_data_debias.py: switched on, they balance the data).
    debias = summary["debias"]
    balance = debias["balance"][0]
    assert balance["ratio_before"] > 2 and balance["ratio_after"] == balance["ratio_before"]
    assert (debias["counterfactual"], debias["counterfactuals"], debias["pairs"]) == (False, 0, None)
    assert debias["blocked"] > 0


def test_fairness_agreement_of_base_and_tuned_model_is_reported_and_on_the_card(summary):
    fairness = summary["fairness"]
    assert fairness["prompts"] == 8 and fairness["candidates"] >= fairness["prompts"]
    assert 0 <= fairness["base_agreement"] <= 1 and 0 <= fairness["tuned_agreement"] <= 1
    pairs = [json.loads(line) for line in open(fairness["pairs"], encoding="utf-8")]
    assert len(pairs) == 8 and all(p["prompt"] != p["twin_prompt"] for p in pairs)
    card = Path(summary["deploy"]["model_card"]).read_text(encoding="utf-8")
    assert "## Fairness (counterfactual agreement)" in card


def test_summary_json_is_written(summary):
    on_disk = json.loads((Path(summary["run_dir"]) / "summary.json").read_text())
    assert on_disk["evaluate"] == summary["evaluate"]


def test_planted_secret_appears_in_no_output(summary):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter

    secret = PLANTED_SECRET.encode()
    leaks = [str(p) for p in Path(summary["run_dir"]).rglob("*") if p.is_file() and secret in p.read_bytes()]
    assert leaks == []
    assert PLANTED_SECRET not in json.dumps(summary)

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter())

    import asyncio

    found = asyncio.run(artifacts())
    assert found, "the run created artifacts"
    assert not [a.key for a in found if PLANTED_SECRET in json.dumps(a.data, default=str)]


def test_the_export_branch_runs_beside_evaluation_and_the_summary_names_the_critical_path(summary):
    timeline = summary["timeline"]
    stages = timeline["stages"]
    assert {"train", "evaluate", "fairness", "merge", "convert", "quantize Q8_0", "smoke", "card"} <= set(stages)
    together = {frozenset(pair["stages"]) for pair in timeline["overlapped"]}
    assert frozenset({"evaluate", "merge"}) in together  # the merge started when training ended, not after fairness
    assert stages["merge"]["start_s"] < stages["evaluate"]["end_s"]
    assert timeline["critical_path"][0] == "train" and timeline["critical_path"][-1] == "card"
