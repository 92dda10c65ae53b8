"""How well a model prefers the chosen answer: preference accuracy and margin on held-out preference pairs.

For each pair (r1lib/data/preference_tokens.py rows) the log-probability of each side's answer as trained: its scored
tokens (labels not -100: the reasoning and the answer under think_in_loss=keep, the answer alone under mask and
drop), given the prompt (and, under mask, the side's shown reasoning). With the reasoning kept, the answer after
``</think>`` alone would say little: each side's answer follows from its own reasoning. Preference accuracy is the
share of pairs whose chosen answer is the more likely one; the margin is the mean of chosen minus rejected
log-probability. Base and tuned come from one model: the tuned adapter, disabled for
the base (no second model in memory); the tuned model's mean DPO reward margin is ``beta`` times its margin gain over
the base (the base is the reference policy).
"""

from __future__ import annotations

from pydantic import BaseModel

IGNORE = -100


class PreferenceScores(BaseModel):
    pairs: int
    accuracy: float  # share of pairs with chosen log-prob > rejected log-prob (scored tokens)
    margin: float  # mean chosen - rejected answer log-prob


class PreferenceEval(BaseModel):
    base: PreferenceScores
    tuned: PreferenceScores
    reward_margin: float  # beta * (tuned margin - base margin): the mean implicit DPO reward margin of the tuned model
    pairs_from: str = ""  # the test file, or a stable hash split of the training pairs

    def summary_line(self) -> str:
        return (
            f"preference accuracy {self.base.accuracy:.0%} -> {self.tuned.accuracy:.0%} on {self.tuned.pairs} "
            f"held-out pairs, margin {self.base.margin:+.2f} -> {self.tuned.margin:+.2f} nats, "
            f"reward margin {self.reward_margin:+.3f}" + (f" (pairs from {self.pairs_from})" if self.pairs_from else "")
        )


def side_logprobs(model, tokenizer, rows: list[dict], side: str, batch_size: int = 8) -> list[float]:
    """Sum of the scored tokens' log-probabilities of one side of each row, in order."""
    import torch

    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        seqs = [r["prompt_ids"] + r[f"{side}_ids"] for r in chunk]
        masks = [[0] * len(r["prompt_ids"]) + [int(label != IGNORE) for label in r[f"{side}_labels"]] for r in chunk]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        scored = torch.tensor([m + [0] * (width - len(m)) for m in masks], device=device)[:, 1:]
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
            token_logps = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        out += (token_logps * scored).sum(-1).tolist()
    return out


def scores(model, tokenizer, rows: list[dict], batch_size: int = 8) -> PreferenceScores:
    chosen = side_logprobs(model, tokenizer, rows, "chosen", batch_size)
    rejected = side_logprobs(model, tokenizer, rows, "rejected", batch_size)
    diffs = [c - r for c, r in zip(chosen, rejected)]
    return PreferenceScores(
        pairs=len(rows),
        accuracy=round(sum(d > 0 for d in diffs) / max(len(diffs), 1), 4),
        margin=round(sum(diffs) / max(len(diffs), 1), 4),
    )


def evaluate_preferences(peft_model, tokenizer, rows: list[dict], beta: float = 0.1, batch_size: int = 8):
    """Base (adapter disabled) and tuned scores of ``peft_model`` on the pair ``rows``."""
    was_training = peft_model.training
    peft_model.eval()
    try:
        with peft_model.disable_adapter():
            base = scores(peft_model, tokenizer, rows, batch_size)
        tuned = scores(peft_model, tokenizer, rows, batch_size)
    finally:
        peft_model.train(was_training)
    return PreferenceEval(base=base, tuned=tuned, reward_margin=round(beta * (tuned.margin - base.margin), 4))


def held_out_preferences(peft_model, tokenizer, held_out, max_pairs: int, beta: float, batch_size: int = 8):
    """``evaluate_preferences`` on the first ``max_pairs`` of ``held_out.pairs`` (a HeldOut, r1lib/stages.py), or None
    when the run has no held-out pairs. ``peft_model``: the adapter on the base, not merged (the base is the adapter
    disabled)."""
    from datasets import load_from_disk

    if not held_out.pairs:
        return None
    pairs = load_from_disk(held_out.pairs)
    rows = pairs.select(range(min(max_pairs, pairs.num_rows))).to_list()
    result = evaluate_preferences(peft_model, tokenizer, rows, beta, batch_size)
    return result.model_copy(update={"pairs_from": held_out.pairs_from})


def evaluate_adapter(model_dir: str, model_cfg, adapter_dir: str, rows: list[dict], beta: float = 0.1, **kw):
    """``evaluate_preferences`` of an adapter folder on its base model (loaded as the pipeline loads it)."""

    from r1lib.model.loading import load_adapter, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    base = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit)
    model = load_adapter(base, adapter_dir)
    return evaluate_preferences(model, tokenizer, rows, beta, **kw)
