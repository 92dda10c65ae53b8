"""Group relative policy optimization with verifiable rewards: TRL's ``GRPOTrainer`` on the prompts of the tokenize
stage's rows, each completion ranked within its group by the weighted rewards of r1lib/training/rewards.py against
the row's reference answer (the text after ``</think>`` in the row's labelled part).

The rows are the ones SFT trains on, so no stage writes anything new: ``grpo_rows`` decodes each row's prompt (cut
at the end of the model's generation prompt, so reasoning shown under think_in_loss=mask is not part of it) and its
answer. A row whose answer cannot be checked (none after ``</think>``, empty, free text longer than
``train.grpo.max_answer_chars``, cut by tokenize truncation) is refused with its reason: counted in the log and in
``grpo_rows.json``, listed in ``grpo_refused.jsonl`` beside the checkpoints.

Completions come from plain HF generation inside TRL (no vLLM). On the unsloth backend ``import unsloth`` (fit.py,
backends.py: before trl is imported) replaces TRL's GRPOTrainer with Unsloth's patched subclass (its own generation
mode switch and chunked log-probabilities); this module builds whichever ``trl.GRPOTrainer`` is. The reference policy
for the KL term (``train.grpo.beta`` > 0) is the starting policy with no second model in memory (base.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from pathlib import Path

from r1lib.data.chat_template import BOS, EOS, THINK_CLOSE, render_prompt
from r1lib.errors import ConfigError, PermanentError
from r1lib.io import atomic_path, write_json
from r1lib.training.methods.base import TrainerSpec, TrainingMethod, reference_policy, trainer_arguments
from r1lib.training.rewards import checkable, trl_rewards

log = logging.getLogger(__name__)
IGNORE = -100
# What the story of a run shows per logging step (TRL's names; the format reward logs think_closed_ratio).
STORY = (
    "loss",
    "reward",
    "rewards/correctness/mean",
    "rewards/format/mean",
    "rewards/overlong/mean",
    "completions/mean_length",
    "completions/think_closed_ratio",
    "completions/clipped_ratio",
    "kl",
)


def generation_prompt_tail(tokenizer) -> list[int]:
    """The token ids the model's chat template puts after the last user turn to open the assistant's (R1:
    ``<｜Assistant｜><think>\\n``): where a row's generation prompt ends."""
    marker = "\u2063grpo-prompt-end\u2063"
    text = render_prompt(tokenizer, {"system": "", "messages": [{"role": "user", "content": marker}, {}]})
    return tokenizer(text.rsplit(marker, 1)[1], add_special_tokens=False)["input_ids"]


def _cut_after(ids: list[int], tail: list[int]) -> int:
    """The position right after the last occurrence of ``tail`` in ``ids``; len(ids) when it does not occur."""
    n = len(tail)
    for start in range(len(ids) - n, -1, -1):
        if n and ids[start : start + n] == tail:
            return start + n
    return len(ids)


def grpo_rows(rows, tokenizer, max_answer_chars: int) -> tuple[list[dict], list[dict]]:
    """(kept, refused) of the tokenize stage's rows (``input_ids``, ``labels``): kept rows are ``{"prompt": the
    generation prompt as text, "answer": the reference answer}``; refused rows ``{"row", "reason", "prompt"}``."""
    tail = generation_prompt_tail(tokenizer)
    eos = tokenizer.eos_token_id
    # TRL tokenizes the prompt text with the tokenizer's own special tokens: a BOS it adds must not be in the text.
    adds_bos = tokenizer.bos_token_id is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    kept, refused = [], []
    for index, row in enumerate(rows):
        labels = row["labels"]
        first = next((i for i, label in enumerate(labels) if label != IGNORE), len(labels))
        prompt_ids = row["input_ids"][:first]
        prompt = tokenizer.decode(prompt_ids[: _cut_after(prompt_ids, tail)], skip_special_tokens=False)
        if adds_bos:
            prompt = prompt.removeprefix(tokenizer.bos_token or BOS)
        completion = tokenizer.decode(row["input_ids"][first:], skip_special_tokens=False)
        if labels[-1:] != [eos]:
            reason = "truncated_row: cut at tokenize.max_seq_length, its answer may be incomplete"
        else:
            answer = completion.split(THINK_CLOSE, 1)[1].replace(EOS, "").strip() if THINK_CLOSE in completion else None
            reason = checkable(answer, max_answer_chars)
        if reason is None:
            kept.append({"prompt": prompt, "answer": answer})
        else:
            refused.append({"row": index, "reason": reason, "prompt": prompt[-200:]})
    return kept, refused


def prepared_rows(rows, tokenizer, max_answer_chars: int, where: str, out_dir: Path | None):
    """``grpo_rows`` as a datasets.Dataset; the counts logged and, with ``out_dir``, written (``grpo_rows.json``,
    ``grpo_refused.jsonl``). No checkable row at all is a PermanentError naming the reasons."""
    from datasets import Dataset

    kept, refused = grpo_rows(rows, tokenizer, max_answer_chars)
    reasons = Counter(r["reason"].split(":", 1)[0] for r in refused)
    counts = {"rows_in": len(rows), "rows_kept": len(kept), "refused": dict(reasons)}
    log.info("grpo rows (%s): %d in, %d kept, %d refused %s", where, len(rows), len(kept), len(refused), dict(reasons))
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = "grpo" if where == "the training set" else "grpo_eval"
        write_json(out_dir / f"{stem}_rows.json", counts)
        with atomic_path(out_dir / f"{stem}_refused.jsonl") as tmp:
            Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refused), encoding="utf-8")
    if not kept:
        examples = "; ".join(f"row {r['row']}: {r['reason']}" for r in refused[:3])
        raise PermanentError(
            f"train.method = grpo: none of the {len(rows)} rows of {where} has a checkable answer ({examples}); "
            "GRPO needs rows whose answer after </think> is short enough to check (train.grpo.max_answer_chars)"
        )
    return Dataset.from_list(kept)


def check_group_size(spec: TrainerSpec) -> None:
    """The completions of one optimizer step, counted over every process of a launch preset, fill whole groups
    (the config form checks one process; a launch plan can add processes)."""
    per_step = spec.micro_batch * spec.accumulation * int(os.environ.get("WORLD_SIZE", "1"))
    if why := spec.cfg.grpo.group_split(per_step):
        raise ConfigError(
            f"train.method = grpo: train.micro_batch_size x train.gradient_accumulation x processes: {why}"
        )


def eval_batch_size(spec: TrainerSpec) -> int:
    """The held-out micro-batch: TRL scores whole groups there too, so the held-out batch of every process together
    must be a multiple of num_generations. The micro-batch, raised to the next size that holds whole groups."""
    group, processes = spec.cfg.grpo.num_generations, int(os.environ.get("WORLD_SIZE", "1"))
    step = group // math.gcd(group, processes)
    return -(-spec.micro_batch // step) * step


def use_recorded_rollouts(model, setting: str) -> str:
    """Point the policy's ``generate`` (what TRL samples rollouts with) at the recorded decode step when
    ``train.grpo.rollouts`` asks for it; says which path the rollouts take."""
    from r1lib.model.graph_decode import LayerLoop, recorded_generate

    on_cuda = next(model.parameters()).device.type == "cuda"
    if setting == "hf" or (setting == "auto" and not on_cuda):
        return "HF generate"
    if why := LayerLoop.unsupported(model):
        log.warning("train.grpo.rollouts = %s: %s needs HF generate, which does the rollouts", setting, why)
        return f"HF generate ({why})"
    if not on_cuda and any(type(m).__name__ == "Linear4bit" for m in model.modules()):
        # bitsandbytes repacks CPU 4-bit weights at their first eval-mode forward, which its training forward cannot use
        log.warning("train.grpo.rollouts = recorded on a CPU with a 4-bit model: HF generate does the rollouts instead")
        return "HF generate (a 4-bit model on a CPU)"
    model.generate = recorded_generate(model)
    return "the recorded decode step" + (" (CUDA graph)" if on_cuda else " (eager: no CUDA device)")


def build(spec: TrainerSpec, model, tokenizer):
    from trl import GRPOConfig, GRPOTrainer

    settings = spec.cfg.grpo
    check_group_size(spec)
    train_rows = prepared_rows(
        spec.train_rows, tokenizer, settings.max_answer_chars, "the training set", spec.output_dir
    )
    eval_rows = None
    if spec.eval_rows is not None:
        eval_rows = prepared_rows(spec.eval_rows, tokenizer, settings.max_answer_chars, "the held-out set", None)
    functions, weights = trl_rewards(
        settings.rewards.model_dump(), settings.max_completion_length, settings.overlong_buffer
    )
    args = trainer_arguments(
        spec,
        GRPOConfig,
        num_generations=settings.num_generations,
        per_device_eval_batch_size=eval_batch_size(spec),
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_p=settings.top_p,
        beta=settings.beta,
        loss_type=settings.loss_type,
        reward_weights=weights,
        use_vllm=False,
        log_completions=False,
    )
    tokenizer.padding_side = "left"
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=functions,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        processing_class=tokenizer,
        callbacks=list(spec.callbacks),
    )
    rollouts = use_recorded_rollouts(trainer.model, settings.rollouts)
    policy = reference_policy(trainer, spec) if settings.beta else "none (train.grpo.beta = 0: no KL term)"
    log.info(
        "grpo (%s, rollouts: %s): %d completions per prompt, at most %d new tokens, temperature %g, beta %g, loss %s, "
        "rewards %s; reference policy: %s",
        type(trainer).__name__,
        rollouts,
        settings.num_generations,
        settings.max_completion_length,
        settings.temperature,
        settings.beta,
        settings.loss_type,
        dict(zip(("format", "correctness", "overlong"), weights)),
        policy,
    )
    return trainer


METHOD = TrainingMethod(name="grpo", consumes="sft", columns=("input_ids", "labels"), build=build, reports=STORY)
