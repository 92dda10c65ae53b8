"""bench/dpo_throughput.py end to end on the CPU on its toy shape: both sides (the pipeline's DPO, TRL's plain
DPOTrainer on transformers + bitsandbytes NF4 + peft) train in their own child processes, and the run is written as
JSON and a dated markdown table. The GPU measurement itself is the same command with ``--shape llama8b``."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # two child processes, each loading torch, TRL and a model: minutes on a busy CPU


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
