"""bench/dpo_throughput.py end to end on the CPU on its toy shape: both sides (the pipeline's DPO, TRL's plain
DPOTrainer on transformers + bitsandbytes NF4 + peft) train in their own child processes, and the run is written as
JSON and a dated markdown table. The GPU measurement itself is the same command with ``--shape llama8b``."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # two child processes, each loading torch, TRL and a model: minutes on a busy CPU
def test_the_dpo_bench_runs_both_sides_on_the_tiny_shape(tmp_path):
    from bench.dpo_throughput import main

    out = tmp_path / "results"
    summary = main(["--shape", "tiny", "--seq", "32", "--warmup", "1", "--steps", "1", "--out", str(out),
                    "--work", str(tmp_path / "work"), "--tag", "cpu"])  # fmt: skip
    sides = {r["side"]: r for r in summary["results"]}
    assert set(sides) == {"pipeline", "plain"} and not any("error" in r for r in sides.values()), sides
    assert sides["pipeline"]["backend"] == "hf" and "NF4" in sides["plain"]["backend"]  # no CUDA here
    for side in sides.values():
        assert side["tokens"] == 1 * 2 * 2 * 32 and side["tokens_per_s"] > 0 and len(side["losses"]) == 2
    assert summary["ratios"]["pipeline_over_plain_tokens_per_s"] > 0
    assert json.loads((out / "dpo_throughput_cpu.json").read_text())["ratios"] == summary["ratios"]
    assert "| pipeline | hf |" in (out / "dpo_throughput_cpu.md").read_text()


def test_a_side_stopped_by_the_time_limit_keeps_its_finished_steps_and_memory():
    """The 8B pipeline side once ran out of its limit during step 5 and the table had no number from it: the steps
    that finished and the peak memory so far are reported, the tokens/s over the timed steps that finished."""
    from argparse import Namespace

    from bench.dpo_throughput import stopped, table

    args = Namespace(timeout_s=140.0, warmup=2, batch=16, seq=2048)
    at = {1: 61.6, 2: 68.9, 3: 76.2, 4: 83.6}
    lines = [dict(side="plain", tokens_per_s=6549.0)] + [
        dict(side="pipeline", progress=True, step=k, at=t, peak_reserved_gib=18.0 + k, peak_allocated_gib=17.0,
             peak_rss_gib=16.3) for k, t in at.items()
    ]  # fmt: skip
    result = stopped("pipeline", lines, args)
    assert result["error"] == "stopped after 140 s at step 4" and result["peak_reserved_gib"] == 22.0
    assert result["partial_timed_steps"] == 2 and result["timed_seconds"] == 14.7
    assert result["tokens_per_s"] == round(2 * 16 * 2 * 2048 / 14.7, 1)
    assert result["step_seconds"] == [7.3, 7.3, 7.4]
    assert stopped("plain", lines, args) == dict(side="plain", error="stopped after 140 s at step 0")

    summary = dict(date="2026-12-08", device="d", shape="llama8b", seq=2048, micro_batch_pairs=16, warmup_steps=2,
                   timed_steps=3, torch="t", transformers="x", trl="y", command="c", results=[result],
                   ratios={"pipeline_over_plain_tokens_per_s": 1.4})  # fmt: skip
    text = table(summary)
    assert "| pipeline | failed: stopped after 140 s at step 4 | 8,916 (2 timed steps) | 14.7 | 22.0 |" in text
    assert "Partial: pipeline stopped by the time limit" in text
