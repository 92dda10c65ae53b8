"""The smoke test's HF reference: the merged export loaded with transformers, its greedy tokens and its perplexity
over held-out answer tokens, which the GGUFs must match (tasks/smoke.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from r1lib.io import write_json
from r1lib.model.generation import own_generation_config


def load_merged(merged_dir: str, dtype: str = "float32", trust_remote_code: bool = False):
    """The merged export in ``dtype``. It is this run's own output in an architecture llama.cpp converts, so it
    needs no code of its own: ``trust_remote_code`` stays off unless a caller says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1lib.model.loading import load_tokenizer, remote_code_policy

    with remote_code_policy(merged_dir, trust_remote_code):
        model = AutoModelForCausalLM.from_pretrained(
            merged_dir,
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            device_map={"": torch.cuda.current_device()} if torch.cuda.is_available() else None,
        )
    return model.eval(), load_tokenizer(merged_dir, trust_remote_code=trust_remote_code)


def hf_greedy_tokens(merged_dir: str, prompt: str, n_tokens: int, loaded=None, with_logits: bool = False):
    """The HF merged model's greedy tokens for ``prompt`` (up to EOS); with ``with_logits`` also the raw logits of
    every step (to judge a near tie where the GGUF differs)."""
    import torch

    model, tokenizer = loaded or load_merged(merged_dir)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad(), own_generation_config(model):
        out = model.generate(
            ids,
            max_new_tokens=n_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            output_logits=with_logits,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    tokens = tokens[: tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens
    if not with_logits:
        return tokens
    return tokens, [step[0].float().cpu() for step in out.logits[: len(tokens)]]


def write_perplexity_rows(
    test_dataset: str, n_rows: int, n_ctx_limit: int, path: Path, max_tokens: int | None = None
) -> int:
    """The first ``n_rows`` held-out rows (input_ids, labels) as JSON for the children, while they hold at most
    ``max_tokens`` tokens together (at least one row); returns how many."""
    from datasets import load_from_disk

    rows = load_from_disk(test_dataset)
    picked, tokens = [], 0
    for r in rows.select(range(min(n_rows, len(rows)))):
        if len(r["input_ids"]) > n_ctx_limit:
            continue
        if picked and max_tokens is not None and tokens + len(r["input_ids"]) > max_tokens:
            break
        picked.append({"input_ids": r["input_ids"], "labels": r["labels"]})
        tokens += len(r["input_ids"])
    write_json(path, picked)
    return len(picked)


def hf_perplexity(loaded, rows_path: Path) -> float:
    import torch

    from r1lib.model.loading import answer_token_nll

    model, _ = loaded
    total, count = 0.0, 0
    with torch.no_grad():
        for row in json.loads(rows_path.read_text(encoding="utf-8")):
            nll, n = answer_token_nll(
                model,
                torch.tensor([row["input_ids"]], device=model.device),
                torch.tensor([row["labels"]], device=model.device),
            )
            total, count = total + nll.item(), count + n
    return math.exp(total / max(count, 1))
