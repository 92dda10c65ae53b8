"""The whole tiny flow with train.method=dpo on preference pairs generated from the sample task
(data/sample/preference_train.jsonl: chosen = the right answer, rejected = a wrong topic; data/make_sample_data.py),
one run through to the summary: the data stages hand the pairs to DPO, evaluate scores held-out pairs base vs tuned
beside the existing metrics, and merge, GGUF, smoke test and card work as for SFT. How far DPO moves preference
accuracy is measured in tests/lib/training/test_preference_training.py; this run checks the wiring."""

import json
from pathlib import Path

import pytest

PAIRS = "data/sample/preference_train.jsonl"
STEPS, LR = 20, 1e-3  # the tiny preset's SFT rate (1e-2) collapses this base under DPO: its answers lose </think>


@pytest.fixture(scope="module")
def summary(prefect_harness, tmp_path_factory):
    from flows.finetune import finetune
    from r1lib.presets import preset

    config = preset("tiny")
    config = config.model_validate(
        {
            **config.model_dump(),
            "runs_dir": str(tmp_path_factory.mktemp("runs")),
            "data": {**config.data.model_dump(), "train_paths": [PAIRS]},  # the SFT test file stays the test file
            "train": {
                **config.train.model_dump(),
                "method": "dpo",
                "max_steps": STEPS,
                "learning_rate": LR,
                "micro_batch_size": 8,
            },
            # One quantized type beside the F16 (the tiny flow exports and smoke-tests the preset's two) and half
            # the preset's answer tokens: what is checked here is that a DPO adapter is scored, merged, exported and
            # answers, not every quantizer or the answers' accuracy (tests/flows/test_flow.py checks those).
            "export": {**config.export.model_dump(), "quantizations": ["Q8_0"]},
            "evaluate": {**config.evaluate.model_dump(), "max_new_tokens": 24},
            # The R1 format after these few DPO steps depends on the embedded model's weights, which its build gives
            # differently on different CPUs (seen: AVX2-only vs AVX-512 machines); tests/flows/test_flow.py requires
            # the format after the preset's whole training. Here every GGUF must load and answer.
            "smoke": {**config.smoke.model_dump(), "require_r1_format": False},
        }
    )
    summary = finetune(config).summary.data
    print("dpo flow:", summary["train"]["trained_on"], summary["evaluate"]["preference"], summary["dedup"])
    return summary


@pytest.mark.slow  # the whole flow
def test_every_pair_is_trained_held_out_or_dropped_with_a_reason(summary):
    pairs = sum(1 for line in open(PAIRS, encoding="utf-8") if line.strip())
    counts = summary["data"]["per_file"][PAIRS]
    assert counts == {"accepted": pairs, "quarantined": 0, "reasons": {}}
    trained, held_out, dedup = (
        summary["tokenize"]["preference"],
        summary["tokenize_test"]["preference"],
        summary["dedup"],
    )
    assert dedup["train_in"] == pairs and dedup["split_to_test"] == dedup["held_out_pairs"] > 0
    augment = summary["augment"]  # no variant of a pair; general replay rows beside them (train.replay_weight)
    assert augment["origins"]["original"] == augment["rows_in"] and augment["rows_out"] == summary["debias"]["rows_in"]
    assert augment["origins"]["replay"] == augment["rows_out"] - augment["rows_in"] > 0
    assert trained["rows_in"] == dedup["train_out"] - summary["debias"]["blocked"]
    assert trained["rows"] + sum(trained["dropped"].values()) == trained["rows_in"]
    assert 0 < held_out["rows_in"] <= dedup["held_out_pairs"]
    assert (
        summary["train"]["method"] == "dpo" and summary["train"]["trained_on"] == f"{trained['rows']} preference pairs"
    )


@pytest.mark.slow
def test_held_out_preference_accuracy_and_margin_are_reported_base_vs_tuned(summary):
    preference = summary["evaluate"]["preference"]
    assert preference["base"]["pairs"] == preference["tuned"]["pairs"] == summary["tokenize_test"]["preference"]["rows"]
    assert preference["pairs_from"].startswith("a stable hash split of the training pairs")
    assert preference["tuned"]["margin"] > preference["base"]["margin"]  # DPO moved the chosen side up
    assert {"accuracy_before", "accuracy_after", "perplexity_after"} <= set(summary["evaluate"])


@pytest.mark.slow
def test_the_dpo_adapter_is_merged_exported_smoke_tested_and_named_on_the_card(summary):
    run = Path(summary["run_dir"])
    assert all(g["smoke_tokens_per_second"] > 0 for g in summary["gguf"]), summary["gguf"]
    card = (run / "card" / "README.md").read_text(encoding="utf-8")
    assert "DPO on " in card and "preference pairs" in card and "preference accuracy (held-out pairs)" in card
    assert json.loads((run / "summary.json").read_text(encoding="utf-8"))["train"]["method"] == "dpo"
