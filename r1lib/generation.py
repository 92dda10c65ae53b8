"""Generating R1 answers in batches, and scoring them against references.

Scores: accuracy of the answer after ``</think>`` (exact and normalized: case, spaces, punctuation), R1 format
compliance (a closed think block with reasoning, then an answer), the share of empty thinking, repeated 3-grams.
"""

from __future__ import annotations

import logging
import re
import string
import time

from r1lib.chat_template import EOS, THINK_CLOSE, THINK_OPEN, extract_answer
from r1lib.config import EvalConfig
from r1lib.records import answer_of

log = logging.getLogger(__name__)


def normalize_answer(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation + "。，！？"))
    return re.sub(r"\s+", " ", text).strip()


def repetition_rate(text: str, n: int = 3) -> float:
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def generate(model, tokenizer, prompts: list[str], cfg: EvalConfig) -> tuple[list[str], bool]:
    """Completions of the prompts (already templated), batched, left-padded; stops early past the time limit."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    outputs, started, stopped = [], time.monotonic(), False
    kwargs = {
        "max_new_tokens": cfg.max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "repetition_penalty": cfg.repetition_penalty,
        "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
        "do_sample": cfg.temperature > 0,
    }
    if cfg.temperature > 0:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(prompts), cfg.batch_size), desc="generating", unit="batch"):
        if time.monotonic() - started > cfg.time_limit_s:
            stopped = True
            log.warning("evaluation generation stopped by its time limit after %d prompts", len(outputs))
            break
        batch = tokenizer(
            prompts[start : start + cfg.batch_size], add_special_tokens=False, padding=True, return_tensors="pt"
        ).to(device)
        remaining = max(cfg.time_limit_s - (time.monotonic() - started), 1.0)
        with torch.no_grad():  # max_time also bounds the batch that straddles the limit
            out = model.generate(**batch, **kwargs, max_time=remaining, use_cache=True)
        outputs += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=False)
    return outputs, stopped


def format_check(completion: str) -> tuple[bool, bool]:
    """(R1 format ok, thinking empty) of a completion that follows the generation prompt (which opens ``<think>``).

    OK means: exactly one ``</think>``, non-empty reasoning before it, no second ``<think>``, a non-empty answer after.
    """
    if completion.count(THINK_CLOSE) != 1:
        return False, False
    reasoning, answer = completion.split(THINK_CLOSE, 1)
    reasoning = reasoning.replace(THINK_OPEN, "", 1).strip()
    answer = answer.replace(EOS, "").strip()
    ok = bool(reasoning) and bool(answer) and THINK_OPEN not in reasoning and THINK_OPEN not in answer
    return ok, not reasoning


def score_generations(records: list[dict], completions: list[str]) -> dict:
    """Accuracy (reasoning stripped; exact and normalized), format compliance and repetition of the generations."""
    exact = normalized = format_ok = empty = 0
    repetition = 0.0
    for record, completion in zip(records, completions):
        completion = completion.split(EOS, 1)[0]  # padding after EOS in a batch is not part of the answer
        answer = extract_answer(completion)
        gold = answer_of(record).strip()
        exact += answer == gold
        normalized += answer is not None and normalize_answer(answer) == normalize_answer(gold)
        ok, empty_thinking = format_check(completion)
        format_ok += ok
        empty += empty_thinking
        repetition += repetition_rate(completion)
    n = max(len(completions), 1)
    return {
        "accuracy": round(exact / n, 4),
        "accuracy_normalized": round(normalized / n, 4),
        "format_ok": round(format_ok / n, 4),
        "empty_thinking": round(empty / n, 4),
        "repetition_rate": round(repetition / n, 4),
        "generated": len(completions),
    }
