"""What GRPO is judged by: the mean of each reward over held-out prompts, greedy completions of an adapter (or of
the base model), generated the way the evaluation generates (r1lib/model/generation.py: length-sorted batches).
bench/grpo_signal.py and the GRPO acceptance test compare an SFT adapter with the GRPO adapter trained from it."""

from __future__ import annotations

from collections import Counter

from pydantic import BaseModel

from r1lib.config import EvalConfig, ModelConfig
from r1lib.data.chat_template import EOS, extract_answer
from r1lib.training.rewards import correctness_reward, format_reward, think_closed


class HeldOutRewards(BaseModel):
    prompts: int
    correctness: float  # mean correctness reward (the share of right answers)
    format: float  # mean format reward
    think_closed: float  # share of completions that close their think block
    mean_new_tokens: float
    seconds: float
    answers: dict[str, int] = {}  # the five most frequent answers after </think>: a policy stuck on one shows here


def held_out_rewards(model, tokenizer, rows: list[dict], max_new_tokens: int, batch_size: int = 32) -> HeldOutRewards:
    """Greedy completions of ``rows`` (``{"prompt", "answer"}``: r1lib/training/methods/grpo.py's rows) scored by the
    rewards. ``model`` is in eval mode on its device."""
    cfg = EvalConfig(temperature=0.0, batch_size=batch_size, max_new_tokens=max_new_tokens, time_limit_s=3600)
    # grpo rows leave out a BOS the tokenizer adds itself; generate() tokenizes without special tokens
    bos = tokenizer.bos_token if tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id] else ""
    from r1lib.model.generation import generate

    completions, stats = generate(model, tokenizer, [bos + r["prompt"] for r in rows], cfg)
    done = [(c, r) for c, r in zip(completions, rows) if c is not None]
    n = max(len(done), 1)
    return HeldOutRewards(
        prompts=len(done),
        correctness=round(sum(correctness_reward(c, r["answer"]) for c, r in done) / n, 4),
        format=round(sum(format_reward(c) for c, _ in done) / n, 4),
        think_closed=round(sum(think_closed(c) for c, _ in done) / n, 4),
        mean_new_tokens=round(stats.new_tokens / n, 1),
        seconds=stats.seconds,
        answers=dict(Counter(str(extract_answer(c.split(EOS, 1)[0])) for c, _ in done).most_common(5)),
    )


def adapter_rewards(
    model_dir: str, model_cfg: ModelConfig, adapter_dir: str | None, rows: list[dict], max_new_tokens: int
) -> HeldOutRewards:
    """``held_out_rewards`` of an adapter folder on its base model, loaded as the pipeline loads it (the base model
    alone when ``adapter_dir`` is None)."""
    from r1lib.model.loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    model = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return held_out_rewards(model, tokenizer, rows, max_new_tokens)
