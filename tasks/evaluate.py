"""Stage 6, evaluate: the base model and the fine-tuned one on the same held-out set.

- Perplexity: token-weighted over the trained (answer) tokens of the held-out rows, through ``answer_token_nll``
  (only labelled positions meet the LM head, so no ``batch x seq x vocab`` logits are ever held).
- Accuracy: batched greedy (or configured) generation from the R1 generation prompt, bounded in tokens and time; the
  answer after ``</think>`` is compared with the reference, exactly and normalized (case, spaces, punctuation).
- Format: a closed ``<think>`` block with non-empty reasoning, then a non-empty answer.
- Repetition: the share of repeated 3-grams in the generations.
- Forgetting: perplexity on the general replay set before vs after.
"""

from __future__ import annotations

import logging
import re
import string
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.chat_template import THINK_CLOSE, extract_answer
from tasks.config import EvalConfig, ModelConfig, TokenizeConfig
from tasks.io import read_jsonl, write_json, write_jsonl
from tasks.orchestration import stage_options
from tasks.records import answer_of
from tasks.tokenize import render_prompt

log = logging.getLogger(__name__)


class ModelScores(BaseModel):
    perplexity: float
    replay_perplexity: float | None
    accuracy: float
    accuracy_normalized: float
    format_ok: float
    repetition_rate: float
    generated: int
    stopped_by_time_limit: bool


class Evaluation(BaseModel):
    base: ModelScores
    tuned: ModelScores
    forgetting_ratio: float | None  # replay perplexity after / before
    samples: str


def perplexity(model, dataset_dir: str, batch_size: int) -> float:
    import math

    import torch
    from datasets import load_from_disk

    from tasks.model import answer_token_nll

    rows = load_from_disk(dataset_dir)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = rows[start:start + batch_size]
            width = max(len(ids) for ids in batch["input_ids"])
            ids = torch.tensor([x + [0] * (width - len(x)) for x in batch["input_ids"]], device=device)
            labels = torch.tensor([x + [-100] * (width - len(x)) for x in batch["labels"]], device=device)
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch["input_ids"]], device=device)
            nll, n = answer_token_nll(model, ids, labels, mask)
            total, count = total + nll.item(), count + n
    return math.exp(total / max(count, 1))


def normalize_answer(text: str) -> str:
    text = text.lower().strip()
    text = text.translate(str.maketrans("", "", string.punctuation + "。，！？"))
    return re.sub(r"\s+", " ", text).strip()


def repetition_rate(text: str, n: int = 3) -> float:
    words = text.split()
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def generate(model, tokenizer, prompts: list[str], cfg: EvalConfig) -> tuple[list[str], bool]:
    """Completions of the prompts (already templated), batched, left-padded; stops early past the time limit."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    outputs, started, stopped = [], time.monotonic(), False
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": tokenizer.eos_token_id, "repetition_penalty": cfg.repetition_penalty,
              "no_repeat_ngram_size": cfg.no_repeat_ngram_size, "do_sample": cfg.temperature > 0}
    if cfg.temperature > 0:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
    for start in range(0, len(prompts), cfg.batch_size):
        if time.monotonic() - started > cfg.time_limit_s:
            stopped = True
            log.warning("evaluation generation stopped by its time limit after %d prompts", len(outputs))
            break
        batch = tokenizer(prompts[start:start + cfg.batch_size], add_special_tokens=False, padding=True,
                          return_tensors="pt").to(device)
        with torch.no_grad():
            out = model.generate(**batch, **kwargs, use_cache=True)
        outputs += tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=False)
    return outputs, stopped


def score_generations(records: list[dict], completions: list[str]) -> dict:
    exact = normalized = format_ok = 0
    repetition = 0.0
    for record, completion in zip(records, completions):
        answer = extract_answer(completion)
        gold = answer_of(record)
        exact += answer == gold.strip()
        normalized += answer is not None and normalize_answer(answer) == normalize_answer(gold)
        reasoning = completion.split(THINK_CLOSE, 1)[0].strip() if THINK_CLOSE in completion else ""
        format_ok += bool(answer) and bool(reasoning)
        repetition += repetition_rate(completion)
    n = max(len(completions), 1)
    return {"accuracy": exact / n, "accuracy_normalized": normalized / n, "format_ok": format_ok / n,
            "repetition_rate": round(repetition / n, 4), "generated": len(completions)}


def score_model(model, tokenizer, records, test_dataset, replay_dataset, cfg: EvalConfig, tokenize_cfg) -> tuple:
    model.eval()
    prompts = [render_prompt(tokenizer, r, tokenize_cfg.system_prompt) for r in records]
    completions, stopped = generate(model, tokenizer, prompts, cfg)
    scores = ModelScores(
        perplexity=round(perplexity(model, test_dataset, cfg.batch_size), 4),
        replay_perplexity=round(perplexity(model, replay_dataset, cfg.batch_size), 4) if replay_dataset else None,
        stopped_by_time_limit=stopped, **score_generations(records, completions),
    )
    return scores, completions


def evaluate(model_dir: str, adapter_dir: str, test_records: str, test_dataset: str, replay_dataset: str | None,
             model_cfg: ModelConfig, cfg: EvalConfig, tokenize_cfg: TokenizeConfig, out_dir: Path) -> Evaluation:
    from peft import PeftModel

    from tasks.model import load_causal_lm, load_tokenizer

    records = read_jsonl(Path(test_records))[: cfg.max_examples]
    tokenizer = load_tokenizer(model_dir, model_cfg.trust_remote_code, model_cfg.revision)
    model = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit)
    log.info("evaluating the base model on %d held-out rows", len(records))
    base, base_out = score_model(model, tokenizer, records, test_dataset, replay_dataset, cfg, tokenize_cfg)
    model = PeftModel.from_pretrained(model, adapter_dir)
    log.info("evaluating the fine-tuned model")
    tuned, tuned_out = score_model(model, tokenizer, records, test_dataset, replay_dataset, cfg, tokenize_cfg)
    samples = Path(out_dir) / "generations.jsonl"
    write_jsonl(samples, [{"prompt": r["messages"][-2]["content"], "reference": answer_of(r), "base": b, "tuned": t}
                          for r, b, t in zip(records, base_out, tuned_out)])
    forgetting = (round(tuned.replay_perplexity / base.replay_perplexity, 4)
                  if base.replay_perplexity and tuned.replay_perplexity else None)
    result = Evaluation(base=base, tuned=tuned, forgetting_ratio=forgetting, samples=str(samples))
    write_json(Path(out_dir) / "evaluation.json", result.model_dump())
    return result


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="evaluate", **stage_options(timeout_seconds=6 * 3600))
def evaluate_task(model_dir: str, adapter_dir: str, test_records: str, test_dataset: str, replay_dataset: str | None,
                  model_cfg: ModelConfig, cfg: EvalConfig, tokenize_cfg: TokenizeConfig, run_dir: str) -> Evaluation:
    """Base vs fine-tuned: perplexity, accuracy, format, repetition, forgetting."""
    result = evaluate(model_dir, adapter_dir, test_records, test_dataset, replay_dataset, model_cfg, cfg, tokenize_cfg,
                      Path(run_dir) / "evaluate")
    create_table_artifact(
        key="evaluation",
        table=[{"model": name, **scores.model_dump()} for name, scores in (("base", result.base), ("tuned", result.tuned))],
        description=f"Held-out evaluation, base vs fine-tuned. Replay perplexity ratio (forgetting): {result.forgetting_ratio}",
    )
    print(f"perplexity {result.base.perplexity:.2f} -> {result.tuned.perplexity:.2f}; "
          f"accuracy {result.base.accuracy:.0%} -> {result.tuned.accuracy:.0%}; forgetting ratio {result.forgetting_ratio}")
    return result
