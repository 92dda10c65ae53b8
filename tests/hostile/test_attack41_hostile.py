"""Hostile checks of the plain-torch chunked log-probabilities (r1lib/training/logprob.py), ORPO through the fused
LM head (r1lib/training/methods/orpo.py) and the DPO bench's partial results (bench/dpo_throughput.py)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("side", ["chosen", "rejected"])
def test_an_orpo_pair_with_a_side_cut_to_no_scored_token_keeps_the_loss_finite(tmp_path, monkeypatch, side):
    """think_in_loss=mask with tokenize.truncation=truncate can cut a side to shown-only tokens (all -100). Its mean
    log-prob over no token was 0 (probability 1): an inf loss (rejected) or NaN LoRA gradients (chosen) for the
    whole step. Such a pair now has a log-odds of 0 and no odds-ratio gradient; the other pairs keep TRL's values."""
    import torch

    from r1lib.compat import orpo_classes
    from tests.lib.training import test_orpo

    cut = dict(test_orpo.ROWS[0])
    cut[f"{side}_labels"] = [-100] * len(cut[f"{side}_ids"])
    monkeypatch.setattr(test_orpo, "ROWS", [cut, *test_orpo.ROWS[1:]])
    trainer, model, batch = test_orpo.orpo_trainer(tmp_path)
    assert (batch[f"{side}_labels"][0] == -100).all()
    loss, metrics = trainer.get_batch_loss_metrics(model, batch, "train")
    assert torch.isfinite(loss), loss
    trained = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, trained)
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    ours = trainer.concatenated_forward(model, batch)
    theirs = orpo_classes()[1].concatenated_forward(trainer, model, batch)
    assert ours[0][0] == ours[1][0]  # the cut pair: a log-odds of 0
    assert torch.allclose(ours[0][1:], theirs[0][1:], atol=1e-5) and torch.allclose(
        ours[1][1:], theirs[1][1:], atol=1e-5
    )
    assert torch.allclose(ours[4], theirs[4], atol=1e-5)  # the NLL still trains the cut pair's chosen side


@pytest.mark.parametrize("logit_scale", [0.0, 0.5])
def test_chunked_log_probs_apply_a_logit_scale_of_zero_as_trls_kernel_does(logit_scale):
    """TRL passes a model's logit_scale as read, "a real 0.0 is kept as-is" (every logit 0: a uniform distribution);
    the plain-torch function skipped a falsy scale and returned the unscaled log-probs and gradients."""
    import math

    import torch

    from r1lib.training.logprob import OUTPUTS, ChunkedLogProb

    torch.manual_seed(0)
    hidden, weight = torch.randn(5, 8, requires_grad=True), torch.randn(40, 8)
    targets = torch.randint(0, 40, (5,))
    log_probs, entropy, *_ = ChunkedLogProb.apply(hidden, weight, None, targets, 1.0, 4096, None, logit_scale, OUTPUTS)
    reference = ((hidden.detach().double() @ weight.double().t()) * logit_scale).log_softmax(-1)
    assert torch.allclose(log_probs.double(), reference.gather(-1, targets[:, None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(entropy.double(), -(reference.exp() * reference).sum(-1), atol=1e-5)
    if logit_scale == 0.0:
        assert torch.allclose(log_probs, torch.full((5,), -math.log(40)))
        log_probs.sum().backward()
        assert torch.equal(hidden.grad, torch.zeros_like(hidden))


def test_the_dpo_bench_keeps_both_sides_when_a_killed_child_left_half_a_line(tmp_path, monkeypatch):
    """The time limit kills a child with SIGKILL: a progress line cut short made json.loads fail and the bench lose
    both sides' results. A side that wrote its result and then overran while exiting kept a "stopped" line after it,
    which replaced the measurement in the table."""
    import json
    import subprocess

    import bench.dpo_throughput as bench

    measured = dict(side="plain", backend="torch", tokens_per_s=100.0, timed_seconds=2.0, peak_reserved_gib=1.0,
                    peak_allocated_gib=1.0, peak_rss_gib=1.0, losses=[0.69])  # fmt: skip

    def child(command, **_):
        side = command[command.index("--child") + 1]
        results = command[command.index("--results") + 1]
        line = dict(side=side, progress=True, step=1, at=1.0, peak_reserved_gib=1.0, peak_allocated_gib=1.0,
                    peak_rss_gib=1.0)  # fmt: skip
        with open(results, "a") as handle:
            if side == "plain":  # finished, then overran its exit
                handle.write(json.dumps(line) + "\n" + json.dumps(measured) + "\n")
            else:  # killed mid-write of its second step
                handle.write(json.dumps(line) + "\n" + json.dumps({**line, "step": 2})[:30])
        raise subprocess.TimeoutExpired(command, 1)

    monkeypatch.setattr(bench, "build_model_dir", lambda *_: None)
    monkeypatch.setattr(bench.subprocess, "run", child)
    summary = bench.main(["--shape", "tiny", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                          "--warmup", "1", "--steps", "1", "--timeout-s", "5"])  # fmt: skip
    by_side = {r["side"]: r for r in summary["results"]}
    assert by_side["plain"] == measured
    assert by_side["pipeline"]["error"] == "stopped after 5 s at step 1"
    assert by_side["pipeline"]["peak_reserved_gib"] == 1.0
