"""Stage 6b, fairness: does the model answer the same when only the group a prompt mentions changes?

Held-out prompts that mention a group term (the debias term pairs, ``debias.term_pairs_path``) get a counterfactual
twin under the same rules as the debias stage's twins (r1lib/data/counterfactual.py: whole words, names and titles left
alone, rows about a named person skipped). The base and the fine-tuned model each answer both prompts (the evaluate
stage's decoding, ``fairness.max_new_tokens``); a pair *agrees* when the twin's answer, swapped back to the original
group, equals the original's answer (normalized: case, spaces, punctuation). The agreement share, base and
fine-tuned, goes into the summary, the model card and the promotion metrics (``fairness_agreement``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact

from r1lib.config import DebiasConfig, EvalConfig, FairnessConfig, ModelConfig, TokenizeConfig
from r1lib.data.chat_template import EOS, extract_answer, render_prompt
from r1lib.data.counterfactual import Counterfactual
from r1lib.data.records import prompt_of
from r1lib.data.terms import TermPairs, load_blocklist
from r1lib.io import read_jsonl, write_json, write_jsonl
from r1lib.model.generation import generate, normalize_answer
from r1lib.paths import OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult
from r1lib.stages import Candidate, HeldOut

log = logging.getLogger(__name__)


class FairnessReport(StageResult):
    prompts: int  # held-out prompts with a twin that were answered
    candidates: int  # held-out rows that mention a group term
    base_agreement: float | None
    tuned_agreement: float | None
    pairs: str | None  # pairs.jsonl: each prompt, its twin and both models' answers
    status: str

    def metrics(self) -> dict:
        """What the nightly promotion compares (tasks/promote.py)."""
        return {
            "fairness_agreement": self.tuned_agreement,
            "base_fairness_agreement": self.base_agreement,
            "fairness_prompts": self.prompts,
        }

    def summary(self) -> dict:
        return {"fairness": self.model_dump()}

    def summary_lines(self) -> list[tuple[str, str]]:
        if self.tuned_agreement is None:
            return [("fairness", self.status)]
        return [
            (
                "fairness",
                f"counterfactual agreement {self.base_agreement:.0%} -> {self.tuned_agreement:.0%} "
                f"({self.prompts} held-out prompts and their twins)",
            )
        ]

    def card_section(self) -> str:
        lines = ["## Fairness (counterfactual agreement)", ""]
        if self.tuned_agreement is None:
            return "\n".join([*lines, f"Not measured: {self.status}.", ""])
        return "\n".join(
            [
                *lines,
                f"{self.prompts} held-out prompts that mention a group term were answered as written and with the "
                "group terms swapped (names, titles, quotes and code left alone). A pair agrees when the twin's "
                "answer, swapped back, equals the original's.",
                "",
                "| model | agreement |",
                "|---|---|",
                f"| base | {self.base_agreement:.0%} |",
                f"| fine-tuned | {self.tuned_agreement:.0%} |",
                "",
            ]
        )


def twin_prompts(records: list[dict], swapper: Counterfactual, limit: int) -> tuple[list[tuple[dict, dict]], int]:
    """(record, its twin) of the first ``limit`` records whose prompt a twin changes, and how many records mention a
    group term at all. The answers are not compared with references here, only with each other."""
    pairs, candidates = [], 0
    for record in records:
        prompt_only = {**record, "reasoning": None}
        if not any(swapper.pairs.found(m["content"]) for m in record["messages"][:-1]):
            continue
        candidates += 1
        twin, _ = swapper.twin(prompt_only)
        if twin is not None and prompt_of(twin) != prompt_of(record) and len(pairs) < limit:
            pairs.append((record, twin))
    return pairs, candidates


def answer_text(completion: str) -> str:
    """The answer after ``</think>``, or the whole completion when thinking never closed."""
    completion = completion.split(EOS, 1)[0]
    answer = extract_answer(completion)
    return answer if answer is not None else completion


def agreement(originals: list[str], twins: list[str], pairs: TermPairs) -> list[bool]:
    """Whether each twin answer, swapped back to the original group, says what the original answer says."""
    return [
        normalize_answer(answer_text(a)) == normalize_answer(pairs.swap_text(answer_text(b)))
        for a, b in zip(originals, twins)
    ]


def fairness(
    candidate: Candidate,
    held_out: HeldOut,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    tokenize_cfg: TokenizeConfig,
    debias_cfg: DebiasConfig,
    cfg: FairnessConfig,
    out_dir: Path,
) -> FairnessReport:
    """Generate for each held-out prompt with a twin and for the twin, base and fine-tuned; report agreement."""
    if not cfg.enabled or not debias_cfg.term_pairs_path:
        status = "off (fairness.enabled)" if not cfg.enabled else "no term pairs (debias.term_pairs_path)"
        return FairnessReport(
            prompts=0, candidates=0, base_agreement=None, tuned_agreement=None, pairs=None, status=status
        )
    model_dir, adapter_dir = candidate.model_dir, candidate.adapter_dir
    pairs = TermPairs.load(Path(debias_cfg.term_pairs_path))
    protected = load_blocklist(Path(debias_cfg.protected_phrases_path)) if debias_cfg.protected_phrases_path else []
    chosen, candidates = twin_prompts(
        read_jsonl(Path(held_out.records)), Counterfactual(pairs, protected), cfg.max_prompts
    )
    if not chosen:
        status = f"no held-out prompt with a counterfactual twin ({candidates} mention a group term)"
        log.warning("fairness: %s", status)
        return FairnessReport(
            prompts=0, candidates=candidates, base_agreement=None, tuned_agreement=None, pairs=None, status=status
        )

    from r1lib.model.loading import load_adapter, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    model = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit)
    decoding = eval_cfg.model_copy(update={"max_new_tokens": cfg.max_new_tokens or eval_cfg.max_new_tokens})
    prompts = [render_prompt(tokenizer, r, tokenize_cfg.system_prompt) for pair in chosen for r in pair]
    started = time.monotonic()
    model.eval()
    base, _ = generate(model, tokenizer, prompts, decoding)
    model = load_adapter(model, adapter_dir)
    model.eval()
    tuned, _ = generate(model, tokenizer, prompts, decoding)
    n = min(len(base), len(tuned)) // 2  # a time limit may stop generation early: score whole pairs only
    base_agree = agreement(base[0 : 2 * n : 2], base[1 : 2 * n : 2], pairs)
    tuned_agree = agreement(tuned[0 : 2 * n : 2], tuned[1 : 2 * n : 2], pairs)
    rows = [
        {
            "source": record["source"],
            "prompt": prompt_of(record),
            "twin_prompt": prompt_of(twin),
            "base": [answer_text(base[2 * k]), answer_text(base[2 * k + 1])],
            "tuned": [answer_text(tuned[2 * k]), answer_text(tuned[2 * k + 1])],
            "base_agrees": base_agree[k],
            "tuned_agrees": tuned_agree[k],
        }
        for k, (record, twin) in enumerate(chosen[:n])
    ]
    pairs_path = Path(out_dir) / "pairs.jsonl"
    write_jsonl(pairs_path, rows)
    report = FairnessReport(
        prompts=n,
        candidates=candidates,
        base_agreement=round(sum(base_agree) / n, 4) if n else None,
        tuned_agreement=round(sum(tuned_agree) / n, 4) if n else None,
        pairs=str(pairs_path),
        status=f"{n} pairs in {time.monotonic() - started:.1f} s",
    )
    write_json(Path(out_dir) / "fairness.json", report.model_dump())
    return report


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="fairness", **stage_options(timeout_seconds=6 * 3600))
def fairness_task(
    candidate: Candidate,
    held_out: HeldOut,
    *,
    model_cfg: ModelConfig,
    eval_cfg: EvalConfig,
    tokenize_cfg: TokenizeConfig,
    debias_cfg: DebiasConfig,
    cfg: FairnessConfig,
    out_dir: OutputPath,
) -> FairnessReport:
    """Counterfactual agreement of the base and the fine-tuned ``candidate`` on ``held_out`` prompts that mention a
    group."""
    result = fairness(candidate, held_out, model_cfg, eval_cfg, tokenize_cfg, debias_cfg, cfg, Path(out_dir))
    create_table_artifact(
        key="fairness",
        table=[
            {"model": "base", "agreement": result.base_agreement},
            {"model": "fine-tuned", "agreement": result.tuned_agreement},
        ],
        description=f"Counterfactual agreement on {result.prompts} held-out prompts and their twins. {result.status}",
    )
    print(result.summary_lines()[0][1])
    return result
