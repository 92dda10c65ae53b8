"""Stage 6, evaluate: the base model and the fine-tuned one on the same held-out set.

- Perplexity: token-weighted over the trained (answer) tokens of the held-out rows, through ``answer_token_nll``
  (only labelled positions meet the LM head, so no ``batch x seq x vocab`` logits are ever held).
- Accuracy: batched greedy (or configured) generation from the R1 generation prompt, bounded in tokens and time; the
  answer after ``</think>`` is compared with the reference, exactly and normalized (case, spaces, punctuation).
  Generations that reach ``max_new_tokens`` inside the think block are counted as truncated thinking.
- Speed (``EvalConfig.generation``): the 4-bit base is dequantized once and the adapter merged into it, the same
  function as the 4-bit model with the adapter attached, without dequantizing every weight at every decoding step,
  when the full-precision weights and the generation cache fit the memory (else the adapter stays attached); rows
  are batched by length. With ``baseline_rows`` the stage also times plain HF generate on the 4-bit model with the
  adapter attached, and reports tokens/s of both.
- Format: a closed ``<think>`` block with non-empty reasoning, then a non-empty answer.
- Repetition: the share of repeated 3-grams in the generations.
- Forgetting: perplexity on the general replay set before vs after, against ``EvalConfig.max_forgetting_ratio``
  (``on_forgetting``: warn, or fail the stage after the results are written).
- Optional lm-evaluation-harness tasks (``EvalConfig.lm_eval_tasks``), only from local task files, the think block
  stripped before scoring (r1lib/model/benchmarks.py): skipped with a clear message when ``lm_eval`` is not installed
  or the tasks are not local. Nothing is downloaded at run time.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from r1lib.config import EvalConfig, ModelConfig, TokenizeConfig
from r1lib.data.chat_template import render_prompt
from r1lib.data.preference import is_preference
from r1lib.data.records import answer_of
from r1lib.errors import PermanentError
from r1lib.io import read_jsonl, write_json, write_jsonl
from r1lib.model.benchmarks import lm_eval_unavailable, run_lm_eval
from r1lib.model.generation import (
    Decoding,
    GenerationStats,
    generate,
    generation_plan,
    score_generations,
    time_plain_generate,
)
from r1lib.model.loading import answer_nll, perplexity
from r1lib.model.preference_eval import PreferenceEval, held_out_preferences
from r1lib.paths import OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult
from r1lib.stages import Candidate, HeldOut

log = logging.getLogger(__name__)


class QualityGateError(PermanentError):
    """The fine-tuned model failed a configured quality limit (e.g. forgetting)."""


COMPARED = [
    ("perplexity", "held-out answer perplexity (lower is better)"),
    ("accuracy", "answer accuracy, exact"),
    ("accuracy_normalized", "answer accuracy, normalized"),
    ("format_ok", "R1 format compliance"),
    ("empty_thinking", "empty thinking share"),
    ("repetition_rate", "repeated 3-gram rate"),
    ("replay_perplexity", "replay perplexity (forgetting)"),
    ("generated", "generations scored"),
]


class ModelScores(BaseModel):
    perplexity: float
    answer_tokens: int = 0  # held-out answer tokens the perplexity is weighted over
    replay_perplexity: float | None
    accuracy: float
    accuracy_normalized: float
    format_ok: float
    empty_thinking: float = 0.0  # share of generations whose closed think block is empty
    repetition_rate: float
    generated: int
    stopped_by_time_limit: bool
    generation_seconds: float = 0.0
    lm_eval: dict[str, float] = {}
    generation: GenerationStats | None = None  # new tokens, tokens/s, truncated thinking


class Evaluation(StageResult):
    base: ModelScores
    tuned: ModelScores
    forgetting_ratio: float | None  # replay perplexity after / before
    forgetting_limit: float | None = None
    forgetting_exceeded: bool = False
    decoding: Decoding = Decoding()  # the generation settings used (carried into the smoke test and the Modelfile)
    lm_eval_status: str = "not requested"
    samples: str
    preference: PreferenceEval | None = None  # held-out preference pairs, base vs tuned (a dpo/orpo/kto run)
    speed: dict = {}  # how generation ran (merged or adapter, batch, why) and the plain HF baseline's tokens/s

    def comparison(self) -> list[dict]:
        """One row per metric: base, fine-tuned and the change."""
        rows = []
        for key, label in COMPARED:
            before, after = getattr(self.base, key), getattr(self.tuned, key)
            rows.append({"metric": label, "base": before, "tuned": after, "change": _change(before, after)})
        for key in sorted(set(self.base.lm_eval) | set(self.tuned.lm_eval)):
            before, after = self.base.lm_eval.get(key), self.tuned.lm_eval.get(key)
            rows.append({"metric": f"lm_eval {key}", "base": before, "tuned": after, "change": _change(before, after)})
        for key, label in (("accuracy", "preference accuracy (held-out pairs)"), ("margin", "preference margin")):
            if self.preference is not None:
                before, after = getattr(self.preference.base, key), getattr(self.preference.tuned, key)
                rows.append({"metric": label, "base": before, "tuned": after, "change": _change(before, after)})
        rows.append(
            {
                "metric": "forgetting ratio (replay ppl after / before)",
                "base": None,
                "tuned": self.forgetting_ratio,
                "change": None,
            }
        )
        return rows

    def metrics(self) -> dict:
        """The figures a model registry keeps and a promotion compares."""
        return {
            "perplexity": self.tuned.perplexity,
            "accuracy": self.tuned.accuracy,
            "format_ok": self.tuned.format_ok,
            "replay_perplexity": self.tuned.replay_perplexity,
            "forgetting_ratio": self.forgetting_ratio,
            "base_perplexity": self.base.perplexity,
            "base_accuracy": self.base.accuracy,
            **(
                {}
                if self.preference is None
                else {
                    "preference_accuracy": self.preference.tuned.accuracy,
                    "base_preference_accuracy": self.preference.base.accuracy,
                    "reward_margin": self.preference.reward_margin,
                }
            ),  # fmt: skip
            # lm_eval/<task>/<metric>: a promotion may gate on one (PromotionPolicy.metric)
            **{f"lm_eval/{k}": v for k, v in self.tuned.lm_eval.items()},
            **{f"base_lm_eval/{k}": v for k, v in self.base.lm_eval.items()},
        }

    def summary(self) -> dict:
        base, tuned = self.base, self.tuned
        return {
            "evaluate": {
                "perplexity_before": base.perplexity,
                "perplexity_after": tuned.perplexity,
                "accuracy_before": base.accuracy,
                "accuracy_after": tuned.accuracy,
                "format_ok_before": base.format_ok,
                "format_ok_after": tuned.format_ok,
                "replay_perplexity_before": base.replay_perplexity,
                "replay_perplexity_after": tuned.replay_perplexity,
                "forgetting_ratio": self.forgetting_ratio,
                "accuracy_normalized_before": base.accuracy_normalized,
                "accuracy_normalized_after": tuned.accuracy_normalized,
                "empty_thinking_before": base.empty_thinking,
                "empty_thinking_after": tuned.empty_thinking,
                "repetition_rate_before": base.repetition_rate,
                "repetition_rate_after": tuned.repetition_rate,
                "answer_tokens": tuned.answer_tokens,
                "generated": tuned.generated,
                "stopped_by_time_limit": base.stopped_by_time_limit or tuned.stopped_by_time_limit,
                "forgetting_limit": self.forgetting_limit,
                "forgetting_exceeded": self.forgetting_exceeded,
                "decoding": self.decoding.model_dump(),
                "lm_eval": {"status": self.lm_eval_status, "before": base.lm_eval, "after": tuned.lm_eval},
                "comparison": self.comparison(),
                "generation_speed": self.speed,
                "preference": self.preference.model_dump() if self.preference else None,
            }
        }

    def forgetting_text(self) -> str:
        """The forgetting check in plain words."""
        if self.forgetting_ratio is None:
            return "forgetting not measured (no replay set)"
        change = (
            f"general-data (replay) perplexity {self.base.replay_perplexity} -> {self.tuned.replay_perplexity} "
            f"({self.forgetting_ratio}x"
        )
        if self.forgetting_limit is None:
            return f"{change}, no limit set)"
        if self.forgetting_exceeded:
            return (
                f"{change}, over the limit {self.forgetting_limit}x): it forgot general data; "
                "more replay (augment.replay_ratio) or fewer steps"
            )
        return f"{change}, within the limit {self.forgetting_limit}x): general ability kept"

    def summary_lines(self) -> list[tuple[str, str]]:
        base, tuned = self.base, self.tuned
        return [
            (
                "evaluate",
                f"perplexity {base.perplexity:.2f} -> {tuned.perplexity:.2f}; accuracy "
                f"{base.accuracy:.0%} -> {tuned.accuracy:.0%}; format {base.format_ok:.0%} -> "
                f"{tuned.format_ok:.0%}; normalized accuracy {base.accuracy_normalized:.0%} -> "
                f"{tuned.accuracy_normalized:.0%}",
            ),
            ("", f"repetition {base.repetition_rate} -> {tuned.repetition_rate}; lm_eval: {self.lm_eval_status}"),
            *[
                ("", f"lm_eval {key} (think block stripped): {base.lm_eval.get(key)} -> {tuned.lm_eval.get(key)}")
                for key in sorted(set(base.lm_eval) | set(tuned.lm_eval))
            ],
            ("", self.speed_line()),
            ("forgetting", self.forgetting_text()),
            *([("preference", self.preference.summary_line())] if self.preference else []),
        ]

    def speed_line(self) -> str:
        base, tuned = self.base.generation, self.tuned.generation
        if base is None or tuned is None:
            return "generation: not timed"
        line = (
            f"generation ({self.speed.get('mode', '?')}, batch {tuned.batch_size}): {base.tokens_per_second} -> "
            f"{tuned.tokens_per_second} tokens/s; truncated thinking {base.truncated_thinking}/{base.generated} -> "
            f"{tuned.truncated_thinking}/{tuned.generated} at max_new_tokens"
        )
        if self.speed.get("hf_generate_tokens_per_s"):
            line += (
                f"; plain HF generate (4-bit + adapter) {self.speed['hf_generate_tokens_per_s']} tokens/s, "
                f"{self.speed['speedup']}x"
            )
        return line

    def card_section(self) -> str:
        lines = [
            "## Evaluation (held-out set, base vs fine-tuned)",
            "",
            f"Decoding: {json.dumps(self.decoding.model_dump())}. Perplexity is token-weighted over answer tokens "
            "only; accuracy compares the answer after `</think>` (reasoning stripped) with the reference.",
            "",
            "| metric | base | fine-tuned | change |",
            "|---|---|---|---|",
            *[
                f"| {r['metric']} | {_fmt(r['base'])} | {_fmt(r['tuned'])} | {_fmt(r['change'])} |"
                for r in self.comparison()
            ],
            "",
        ]
        if self.forgetting_exceeded:
            lines += [
                f"**Warning:** replay perplexity rose {self.forgetting_ratio}x, over the limit "
                f"{self.forgetting_limit}x (forgetting).",
                "",
            ]
        return "\n".join(lines + [f"lm-evaluation-harness: {self.lm_eval_status}.", ""])


def _change(before: float | None, after: float | None) -> float | None:
    return round(after - before, 4) if before is not None and after is not None else None


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def check_forgetting(ratio: float | None, cfg: EvalConfig) -> bool:
    """True when the replay perplexity ratio is past the configured limit (logged as a warning)."""
    if ratio is None or cfg.max_forgetting_ratio is None or ratio <= cfg.max_forgetting_ratio:
        return False
    log.warning(
        "forgetting: replay perplexity rose %.2fx (limit %.2fx, on_forgetting=%s)",
        ratio,
        cfg.max_forgetting_ratio,
        cfg.on_forgetting,
    )
    return True


def score_model(
    model,
    tokenizer,
    records,
    test_dataset,
    replay_dataset,
    cfg: EvalConfig,
    tokenize_cfg,
    lm_eval: bool = False,
    batch_size: int | None = None,
    perplexity_batch: int | None = None,
) -> tuple:
    import math

    model.eval()
    prompts = [render_prompt(tokenizer, r, tokenize_cfg.system_prompt) for r in records]
    started = time.monotonic()
    completions, stats = generate(model, tokenizer, prompts, cfg, batch_size)
    seconds = time.monotonic() - started
    rows = perplexity_batch or cfg.batch_size
    nll, tokens = answer_nll(model, test_dataset, rows, cfg.perplexity_rows)
    scores = ModelScores(
        perplexity=round(math.exp(nll / max(tokens, 1)), 4),
        answer_tokens=tokens,
        replay_perplexity=(
            round(perplexity(model, replay_dataset, rows, cfg.perplexity_rows), 4) if replay_dataset else None
        ),
        stopped_by_time_limit=stats.stopped_by_time_limit,
        generation_seconds=round(seconds, 2),
        lm_eval=run_lm_eval(model, tokenizer, cfg) if lm_eval else {},
        generation=stats,
        **score_generations(records, completions),
    )
    return scores, completions


def evaluate(
    candidate: Candidate,
    held_out: HeldOut,
    model_cfg: ModelConfig,
    cfg: EvalConfig,
    tokenize_cfg: TokenizeConfig,
    out_dir: Path,
) -> Evaluation:

    from r1lib.model.gpu_memory import release
    from r1lib.model.loading import dequantize_4bit, load_adapter, load_causal_lm, load_tokenizer

    release()  # the training stage's model, before this stage loads its own
    model_dir, adapter_dir = candidate.model_dir, candidate.adapter_dir
    test_records, test_dataset, replay_dataset = held_out.records, held_out.dataset, held_out.replay
    records = [r for r in read_jsonl(Path(test_records)) if not is_preference(r)][: cfg.max_examples]  # SFT rows
    tokenizer = load_tokenizer(model_dir, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    model = load_causal_lm(model_dir, model_cfg, four_bit=model_cfg.load_in_4bit)
    lm_eval_status = lm_eval_unavailable(cfg)
    if lm_eval_status and lm_eval_status != "not requested":
        log.warning(lm_eval_status)
    run_lm = lm_eval_status is None
    prompts = [render_prompt(tokenizer, r, tokenize_cfg.system_prompt) for r in records]
    longest = max((len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]), default=0)
    speed = generation_plan(cfg, model_dir, model_cfg, longest, tokenize_cfg.max_seq_length)
    log.info("generation: %s, batch %d (%s)", speed["mode"], speed["batch"], speed["reason"])
    if cfg.baseline_rows and prompts:
        try:  # a measurement beside the evaluation: its failure must not fail the stage
            speed["hf_generate"] = time_plain_generate(model, adapter_dir, tokenizer, prompts, cfg, speed["batch"])
        except Exception as exc:  # noqa: BLE001
            log.warning("timing plain HF generate failed: %s", exc)
            speed["hf_generate_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if speed["mode"] == "merged" and model_cfg.load_in_4bit:
        model = dequantize_4bit(model)

    def score(model):  # the base and the fine-tuned model, on the same rows with the same settings
        return score_model(
            model,
            tokenizer,
            records,
            test_dataset,
            replay_dataset,
            cfg,
            tokenize_cfg,
            run_lm,
            speed["batch"],
            speed["perplexity_batch"],
        )

    log.info("evaluating the base model on %d held-out rows", len(records))
    base, base_out = score(model)
    model = load_adapter(model, adapter_dir)
    # Before a merge: the base's scores are the adapter's, disabled (no second model in memory).
    preference = held_out_preferences(model, tokenizer, held_out, cfg.max_examples, cfg.preference_beta)
    if speed["mode"] == "merged":
        model = model.merge_and_unload()
    log.info("evaluating the fine-tuned model")
    tuned, tuned_out = score(model)
    if tuned.generation is not None and tuned.generation.truncated_thinking:
        log.warning(
            "the fine-tuned model's thinking reached evaluate.max_new_tokens=%d in %d of %d answers: no answer to "
            "score there, so accuracy reads low; raise evaluate.max_new_tokens",
            cfg.max_new_tokens,
            tuned.generation.truncated_thinking,
            tuned.generation.generated,
        )
    if "hf_generate" in speed:
        speed["hf_generate_tokens_per_s"] = speed["hf_generate"]["tokens_per_s"]
        speed["speedup"] = round(tuned.generation.tokens_per_second / max(speed["hf_generate_tokens_per_s"], 1e-9), 2)
    samples = Path(out_dir) / "generations.jsonl"
    write_jsonl(
        samples,
        [
            {"prompt": r["messages"][-2]["content"], "reference": answer_of(r), "base": b, "tuned": t}
            for r, b, t in zip(records, base_out, tuned_out)
        ],
    )
    forgetting = (
        round(tuned.replay_perplexity / base.replay_perplexity, 4)
        if base.replay_perplexity and tuned.replay_perplexity
        else None
    )
    result = Evaluation(
        base=base,
        tuned=tuned,
        forgetting_ratio=forgetting,
        forgetting_limit=cfg.max_forgetting_ratio,
        forgetting_exceeded=check_forgetting(forgetting, cfg),
        decoding=Decoding.of(cfg),
        lm_eval_status=lm_eval_status or f"ran {cfg.lm_eval_tasks} from {cfg.lm_eval_path}",
        samples=str(samples),
        preference=preference,
        speed=speed,
    )
    write_json(Path(out_dir) / "evaluation.json", result.model_dump())
    write_json(Path(out_dir) / "comparison.json", result.comparison())
    if result.forgetting_exceeded and cfg.on_forgetting == "fail":
        raise QualityGateError(
            f"forgetting: replay perplexity {base.replay_perplexity} -> {tuned.replay_perplexity} "
            f"({forgetting}x, limit {cfg.max_forgetting_ratio}x); results in {Path(out_dir) / 'evaluation.json'}"
        )
    return result


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="evaluate", task_run_name="evaluate", **stage_options(timeout_seconds=6 * 3600))
def evaluate_task(
    candidate: Candidate,
    held_out: HeldOut,
    *,
    model_cfg: ModelConfig,
    cfg: EvalConfig,
    tokenize_cfg: TokenizeConfig,
    out_dir: OutputPath,
) -> Evaluation:
    """Base vs fine-tuned ``candidate`` on ``held_out``: perplexity, accuracy, format, repetition, forgetting."""
    result = evaluate(candidate, held_out, model_cfg, cfg, tokenize_cfg, Path(out_dir))
    create_table_artifact(
        key="evaluation",
        table=result.comparison(),
        description=(
            f"Held-out evaluation, base vs fine-tuned (decoding {result.decoding.model_dump()}). Forgetting ratio "
            f"{result.forgetting_ratio} (limit {result.forgetting_limit}"
            f"{', EXCEEDED' if result.forgetting_exceeded else ''}). lm_eval: {result.lm_eval_status}"
        ),
    )
    print(
        f"perplexity {result.base.perplexity:.2f} -> {result.tuned.perplexity:.2f}; "
        f"accuracy {result.base.accuracy:.0%} -> {result.tuned.accuracy:.0%} "
        f"(normalized {result.base.accuracy_normalized:.0%} -> {result.tuned.accuracy_normalized:.0%}); "
        f"format {result.base.format_ok:.0%} -> {result.tuned.format_ok:.0%}; "
        f"repetition {result.base.repetition_rate} -> {result.tuned.repetition_rate}; "
        f"forgetting ratio {result.forgetting_ratio}" + (" (OVER THE LIMIT)" if result.forgetting_exceeded else "")
    )
    print(result.speed_line())
    if result.preference is not None:
        print(result.preference.summary_line())
    if result.lm_eval_status != "not requested":
        print(f"lm_eval: {result.lm_eval_status}")
    return result
