"""r1lib/training/logprob.py: the plain-torch chunked log-probabilities give what the full softmax gives (every output,
every gradient) under the logit scale, softcap and temperature TRL passes, over several tiles."""

from __future__ import annotations

import pytest


def reference(hidden, weight, bias, targets, temperature, softcap, scale):
    """The same five quantities from the whole logits matrix, through autograd."""
    import torch

    logits = (hidden @ weight.T + (bias if bias is not None else 0)) * (scale or 1.0)
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    z = logits / temperature
    log_p = z.log_softmax(-1)
    return (
        log_p.gather(-1, targets[:, None]).squeeze(-1),
        -(log_p.exp() * log_p).sum(-1),
        torch.logsumexp(2 * log_p, -1),
        z.mean(-1),
        z.argmax(-1) == targets,
    )


@pytest.mark.parametrize(
    ("temperature", "softcap", "scale", "with_bias"), [(1.0, None, None, False), (0.7, 30.0, 2.0, True)]
)
def test_chunked_log_probs_match_the_full_softmax_with_gradients(temperature, softcap, scale, with_bias):
    import torch

    from r1lib.training.logprob import TILE_TOKENS, ChunkedLogProb

    torch.manual_seed(0)
    n = 3 * TILE_TOKENS + 5  # several tiles and a short last one
    leaves = [torch.randn(n, 16).requires_grad_(), torch.randn(300, 16).requires_grad_()]
    leaves.append(torch.randn(300).requires_grad_() if with_bias else None)
    targets = torch.randint(0, 300, (n,))
    grad_lp, grad_ent = torch.randn(n), torch.randn(n)

    got = ChunkedLogProb.apply(*leaves[:3], targets, temperature, 64, softcap, scale, ("log_probs", "entropy",
                               "log_sum_sq_probs", "mean_logits", "is_top1"))  # fmt: skip
    want = reference(*leaves[:3], targets, temperature, softcap, scale)
    for name, a, b in zip(("log_probs", "entropy", "log_sum_sq_probs", "mean_logits"), got, want):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), name
    assert torch.equal(got[4], want[4])
    assert not (got[2].requires_grad or got[3].requires_grad or got[4].requires_grad)

    params = [leaf for leaf in leaves if leaf is not None]
    ours = torch.autograd.grad((got[0] * grad_lp).sum() + (got[1] * grad_ent).sum(), params)
    theirs = torch.autograd.grad((want[0] * grad_lp).sum() + (want[1] * grad_ent).sum(), params)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_only_what_is_asked_for_is_computed_and_a_frozen_head_gets_no_gradient():
    import torch

    from r1lib.training.logprob import ChunkedLogProb

    torch.manual_seed(1)
    hidden, weight = torch.randn(40, 8, requires_grad=True), torch.randn(50, 8)  # a frozen LM head, as under LoRA
    targets = torch.randint(0, 50, (40,))
    log_probs, entropy, sq, mean, top1 = ChunkedLogProb.apply(hidden, weight, None, targets, 1.0, 64, None, None,
                                                              ("log_probs",))  # fmt: skip
    assert entropy is None and sq is None and mean is None and top1 is None
    log_probs.sum().backward()
    expected = torch.autograd.grad(reference(hidden, weight, None, targets, 1.0, None, None)[0].sum(), hidden)[0]
    assert torch.allclose(hidden.grad, expected, atol=1e-5) and weight.grad is None
