"""The smoke stage's parity failure names where the GGUF parted from HF, HF's logit gap there and the setting that
would accept it as a near tie."""

from __future__ import annotations

import torch

from r1lib.config import SmokeConfig
from r1lib.export.gguf import GGUFFile
from r1lib.export.smoke_checks import smoke_plan
from tasks.smoke import divergence

GIB = 2**30


def test_a_quantized_divergence_names_the_gap_and_the_quantized_tolerance():
    big = [GGUFFile(path=f"/x/m-{t}.gguf", type=t, bytes=int(s * GIB)) for t, s in {"F16": 15, "Q8_0": 8}.items()]
    plan = smoke_plan(SmokeConfig(), big, gpu_offload=False)
    logits = torch.zeros(3, 10)
    logits[1, 4], logits[1, 7] = 2.0, 1.25  # HF chose 4; the GGUF took 7, 0.75 below
    message = divergence(plan, [1, 4, 5], [1, 7, 2], logits, 1)
    assert "at token 1" in message and "0.75 logits below" in message
    assert f"smoke.quantized_parity_logit_tolerance={plan.tolerance:g}" in message


def test_an_exact_parity_without_logits_says_no_gap_was_measured():
    small = [GGUFFile(path="/x/m-F16.gguf", type="F16", bytes=GIB // 100)]
    plan = smoke_plan(SmokeConfig(), small, gpu_offload=False)
    message = divergence(plan, [1, 4, 5], [1, 7, 2], None, 1)
    assert "no logit gap measured (smoke.parity_logit_tolerance is 0)" in message
    assert "the GGUF stopped after 1 tokens" in divergence(plan, [1, 4, 5], [1], None, 1)
