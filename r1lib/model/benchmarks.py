"""lm-evaluation-harness tasks on an in-memory model, offline, scoring the answer after the think block.

R1 models answer ``<reasoning></think>answer``: scored whole, a response whose reasoning tries a wrong answer before
the right final one reads as wrong, and peers report benchmark scores tens of points low for it. lm-eval's own
``think_end_token`` (HFLM, 0.4.13) cuts each generation after the last ``</think>`` token id before the task's
filters and metrics see it (``evaluate.lm_eval_strip_thinking``). Generation gets a thinking budget on top of the
answer's tokens (``lm_eval_thinking_tokens`` + ``lm_eval_answer_tokens``); a response still inside its think block
there has no answer and scores as wrong. Tasks come from local YAML only (``evaluate.lm_eval_path``: GPU machines are
offline); data/lm_eval/ ships one built from the sample data, ``r1_sample_topic``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from r1lib.config import EvalConfig

THINK_END = "</think>"


def lm_eval_unavailable(cfg: EvalConfig) -> str | None:
    """Why the configured lm_eval tasks cannot run offline (None when they can)."""
    if not cfg.lm_eval_tasks:
        return "not requested"
    if importlib.util.find_spec("lm_eval") is None:
        return (
            f"skipped lm_eval tasks {cfg.lm_eval_tasks}: lm-evaluation-harness is not installed "
            "(pip install -e '.[tracking]', and put its task files in evaluate.lm_eval_path)"
        )
    if not cfg.lm_eval_path or not Path(cfg.lm_eval_path).is_dir():
        return (
            f"skipped lm_eval tasks {cfg.lm_eval_tasks}: evaluate.lm_eval_path={cfg.lm_eval_path!r} is not a local "
            "folder; lm_eval data is never downloaded at run time"
        )
    return None


def think_end_id(tokenizer) -> int:
    """The token id of ``</think>`` in an R1 tokenizer (a single added token); else a clear error."""
    ids = tokenizer.encode(THINK_END, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"the tokenizer splits {THINK_END!r} into {len(ids)} tokens: not an R1 tokenizer; set "
            "evaluate.lm_eval_strip_thinking=false to score whole responses"
        )
    return ids[0]


def run_lm_eval(model, tokenizer, cfg: EvalConfig) -> dict[str, float]:
    """The configured lm_eval tasks on ``model`` through the model's chat template, offline; ``{task/metric:
    score}`` (stderr left out)."""
    os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "1"
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(
        pretrained=model,
        tokenizer=tokenizer,
        batch_size=cfg.batch_size,
        think_end_token=think_end_id(tokenizer) if cfg.lm_eval_strip_thinking else None,
    )
    out = simple_evaluate(
        model=lm,
        tasks=list(cfg.lm_eval_tasks),
        limit=cfg.lm_eval_limit,
        task_manager=TaskManager(include_path=str(cfg.lm_eval_path)),
        apply_chat_template=True,  # the R1 template: the generation prompt opens the think block
        gen_kwargs={"max_gen_toks": cfg.lm_eval_thinking_tokens + cfg.lm_eval_answer_tokens},
    )
    scores = {}
    for task_name, metrics in out["results"].items():
        for metric, value in metrics.items():
            # "<metric>,<filter>" keys are scores; sample_len, alias and the stderr are not
            if "," in metric and "stderr" not in metric and isinstance(value, (int, float)):
                scores[f"{task_name}/{metric}"] = round(float(value), 4)
    return scores
