"""Per-token log-probabilities of the labels through the LM head, a few tokens at a time, in plain torch.

TRL's fused LM head (the loss of SFT, DPO, KTO, GRPO and our ORPO on labelled positions) calls a Triton kernel that
never holds the batch x vocabulary logits; CPU builds of torch have no Triton. ``ChunkedLogProb`` is the same autograd
function (same arguments, same five outputs) for any device: the forward keeps only per-token statistics, the backward
recomputes each tile of logits and turns it into its gradient in place. A tile is ``TILE_TOKENS`` tokens, in one
buffer reused tile after tile (78 MB of fp32 logits on the embedded model's 152k-token vocabulary): the LM head's
weight is read once per tile, and the passes over a tile work in place in it (a 1,024-token chunk through autograd was
620 MB of new pages at every pass, all of them kept for the backward). r1lib/compat.py installs it.
"""

from __future__ import annotations

import torch

TILE_TOKENS = 128
OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def scaled(logits: torch.Tensor, scale: float | None, softcap: float | None, temperature: float):
    """(z, tanh): the logits as the loss sees them (scale, then softcap, then temperature, as TRL's kernel), in
    place; ``tanh`` is the softcap's, kept for its derivative (None without a softcap)."""
    if scale is not None and scale != 1.0:  # a real 0.0 is kept, as TRL does
        logits.mul_(scale)
    tanh = None
    if softcap:
        tanh = logits.div_(softcap).tanh_()
        logits = tanh * softcap
    if temperature != 1.0:
        logits.div_(temperature)
    return logits, tanh


def projected(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """``hidden @ weight.T + bias`` in fp32, written into ``out`` (a buffer reused tile after tile)."""
    if bias is None:
        return torch.mm(hidden.float(), weight.t(), out=out)
    return torch.addmm(bias, hidden.float(), weight.t(), out=out)


class ChunkedLogProb(torch.autograd.Function):
    """``apply(hidden [N, H], weight [V, H], bias [V] | None, targets [N], temperature, chunk_size, softcap,
    logit_scale, outputs)`` -> (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), each [N] or None when
    not in ``outputs``. Gradients flow from log_probs and entropy into hidden, weight and bias; the other three are
    not differentiable. ``chunk_size`` (TRL's vocabulary tile) is accepted and unused: a tile here spans the whole
    vocabulary."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs):
        ctx.set_materialize_grads(False)  # entropy is mostly logged only: no zero gradient to push back for it
        n, device = hidden.shape[0], hidden.device
        log_z, target_z = (torch.empty(n, dtype=torch.float32, device=device) for _ in range(2))
        asked = {name: torch.empty(n, dtype=torch.float32, device=device) for name in OUTPUTS[1:4] if name in outputs}
        top1 = torch.empty(n, dtype=torch.bool, device=device) if "is_top1" in outputs else None
        weight32, bias32 = weight.float(), (bias.float() if bias is not None else None)
        tile_buffer = torch.empty(min(n, TILE_TOKENS), weight.shape[0], dtype=torch.float32, device=device)
        exp_buffer = torch.empty_like(tile_buffer) if "entropy" in asked else None
        with torch.no_grad():
            for start in range(0, n, TILE_TOKENS):
                end = min(n, start + TILE_TOKENS)
                z, _ = scaled(projected(hidden[start:end], weight32, bias32, tile_buffer[: end - start]),
                              logit_scale, softcap, temperature)  # fmt: skip
                target = targets[start:end]
                target_z[start:end] = z.gather(-1, target[:, None]).squeeze(-1)
                if "mean_logits" in asked:
                    asked["mean_logits"][start:end] = z.mean(-1)
                if "log_sum_sq_probs" in asked:
                    asked["log_sum_sq_probs"][start:end] = torch.logsumexp(2 * z, -1)
                peak, best = z.max(-1, keepdim=True)  # one pass for both (the first maximum, as argmax)
                if top1 is not None:
                    top1[start:end] = best.squeeze(-1) == target
                shifted = z.sub_(peak)
                if exp_buffer is not None:
                    weights = torch.exp(shifted, out=exp_buffer[: end - start])
                    total = weights.sum(-1)
                    # the mean logit under p: sum p (z - peak) / sum p, + peak
                    asked["entropy"][start:end] = weights.mul_(shifted).sum(-1) / total + peak.squeeze(-1)
                else:
                    total = shifted.exp_().sum(-1)
                log_z[start:end] = peak.squeeze(-1) + total.log()
        log_probs = target_z - log_z
        entropy = log_z - asked["entropy"] if "entropy" in asked else None
        sq = asked["log_sum_sq_probs"] - 2 * log_z if "log_sum_sq_probs" in asked else None
        mean = asked.get("mean_logits")
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, entropy if entropy is not None else log_z)
        ctx.settings = (temperature, softcap, logit_scale)
        ctx.mark_non_differentiable(*(x for x in (sq, mean, top1) if x is not None))
        return log_probs, entropy, sq, mean, top1

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, *_):
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        temperature, softcap, scale = ctx.settings
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        weight32, bias32 = weight.float(), (bias.float() if bias is not None else None)
        zeros = lambda t: torch.zeros(t.shape, dtype=torch.float32, device=t.device)  # noqa: E731
        grad_hidden = zeros(hidden) if needs_hidden else None
        grad_weight = zeros(weight) if needs_weight else None
        grad_bias = zeros(bias) if needs_bias else None
        rows = torch.arange(TILE_TOKENS, device=hidden.device)
        tile_buffer = torch.empty(min(hidden.shape[0], TILE_TOKENS), weight.shape[0], dtype=torch.float32,
                                  device=hidden.device)  # fmt: skip
        for start in range(0, hidden.shape[0], TILE_TOKENS):
            end = min(hidden.shape[0], start + TILE_TOKENS)
            tile = hidden[start:end].float()
            z, tanh = scaled(projected(tile, weight32, bias32, tile_buffer[: end - start]), scale, softcap, temperature)
            log_p = z.sub_(log_z[start:end, None])
            entropy_term = None
            if grad_entropy is not None:  # dH / dz = -p (log p + H): needs log p, which the next line overwrites
                entropy_term = log_p + entropy[start:end, None]
            grad = log_p.exp_()  # p, turned into the gradient in place
            if entropy_term is not None:
                entropy_term.mul_(grad).mul_(-grad_entropy[start:end, None].float())
            if grad_log_probs is not None:  # d log p_t / dz = onehot(t) - p
                g = grad_log_probs[start:end].float()
                grad.mul_(-g[:, None])
                grad[rows[: end - start], targets[start:end]] += g
            else:
                grad.zero_()
            if entropy_term is not None:
                grad.add_(entropy_term)
            if temperature != 1.0:
                grad.div_(temperature)
            if tanh is not None:
                grad.mul_(1 - tanh * tanh)
            if scale is not None and scale != 1.0:
                grad.mul_(scale)
            if grad_hidden is not None:
                torch.mm(grad, weight32, out=grad_hidden[start:end])
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), tile)
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        cast = lambda g, like: g.to(like.dtype) if g is not None else None  # noqa: E731
        return cast(grad_hidden, hidden), cast(grad_weight, weight), cast(grad_bias, bias), *(None,) * 6
