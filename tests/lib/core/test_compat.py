"""r1lib/compat.py: the plain-torch stand-in for TRL's chunked log-probability kernel gives what the full softmax
gives, with gradients, and computes only the outputs asked for."""

from __future__ import annotations


def test_torch_chunked_logprob_matches_the_full_softmax():
    import torch
    import trl.trainer.utils as trl_utils

    from r1lib.compat import install_torch_chunked_logprob

    install_torch_chunked_logprob()
    from r1lib.training.logprob import ChunkedLogProb

    assert trl_utils._ChunkedLogProbFunction is ChunkedLogProb  # what TRL's fused LM head calls on this machine
    torch.manual_seed(0)
    hidden = torch.randn(1500, 8, requires_grad=True)
    weight, bias = torch.randn(50, 8), torch.randn(50)
    targets = torch.randint(0, 50, (1500,))
    log_probs, entropy, sq, mean, top1 = trl_utils._ChunkedLogProbFunction.apply(
        hidden, weight, bias, targets, 0.5, 4096, None, 2.0, ("log_probs", "entropy", "is_top1")
    )
    logits = (hidden @ weight.T + bias) * 2.0 / 0.5
    full = logits.log_softmax(-1)
    assert torch.allclose(log_probs, full.gather(-1, targets[:, None]).squeeze(-1), atol=1e-4)
    assert torch.allclose(entropy, -(full.exp() * full).sum(-1), atol=1e-4)
    assert torch.equal(top1, logits.argmax(-1) == targets)
    assert sq is None and mean is None  # not asked for
    log_probs.sum().backward()
    expected = torch.autograd.grad(full.gather(-1, targets[:, None]).sum(), hidden)[0]
    assert torch.allclose(hidden.grad, expected, atol=1e-4)
