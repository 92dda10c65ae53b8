"""Stage 8, smoke test: every GGUF loads in a fresh llama-cpp-python process and answers in the R1 format.

The GGUFs run one after the other in one fresh child process (a bare ``python -c`` with r1lib/export/gguf.py's child
functions, so the interpreter starts and llama.cpp loads once; ``python -m r1lib.export.gguf GGUF --prompts ...`` runs
one by hand), so a crash inside llama.cpp fails the check, naming the GGUF, instead of the worker. Per prompt the child
checks exactly one BOS, both for the templated prompt (tokens parsed as special, no BOS added) and the way llama-cli /
Ollama feed it (the template without the BOS text, BOS added from the GGUF's metadata); it generates with the evaluate
stage's decoding settings where llama.cpp supports them (temperature, top-p, repeat penalty; ``no_repeat_ngram_size``
has no llama.cpp equivalent), and the parent fails loudly unless the output has a closed ``<think>`` block and a
non-empty answer. It records load time and generation tokens/s.

Parity, two ways:
- greedy tokens: the F16 GGUF's greedy tokens (no penalties) must equal the HF merged model's for the same prompt;
- perplexity: each GGUF's perplexity on held-out rows, over the answer tokens only (the HF definition,
  ``r1lib.model.loading.answer_token_nll``), computed from llama.cpp logits of the whole token sequence
  (``logits_all``), beside the HF merged model's. The F16 GGUF must match HF within ``max_f16_perplexity_drift``; each
  quantized type's loss against the F16 is reported (and gated by ``max_quant_perplexity_increase`` when set).

The expensive checks are proportionate (``SmokeConfig``): ``gguf_perplexity`` picks which GGUFs get the perplexity
pass (on a big model with a CPU llama.cpp, only the quantized ones, against the HF merged model: the full-precision
GGUF keeps its greedy-token parity), ``perplexity_max_tokens`` bounds the tokens it reads (and
``proportionate_perplexity_tokens`` where the smoke test is proportionate), and the HF reference loads at float32
only where that fits the GPU memory (else bfloat16). ``parity_logit_tolerance`` accepts a near tie that rounding
decides; ``require_r1_format`` off records format failures as warnings (random-weight rehearsals).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from r1lib.config import SmokeConfig
from r1lib.data.chat_template import extract_answer
from r1lib.errors import ExportCheckError
from r1lib.export.gguf import FULL_PRECISION, GGUFFile, verify_digests
from r1lib.export.hf_reference import (
    HFReference,
    hf_reference,
    perplexity_rows,
    reference_logits,
    smoke_prompts,
)
from r1lib.export.smoke_checks import (
    SmokePlan,
    compare_greedy,
    full_precision_bytes,
    logit_gap,
    not_finite,
    perplexity_budget,
    perplexity_types,
    proportionate_on,
    smoke_plan,
)
from r1lib.export.smoke_run import SmokeChildren, child_threads
from r1lib.io import write_json
from r1lib.model.generation import Decoding
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult

log = logging.getLogger(__name__)


class SmokeResult(BaseModel):
    gguf: str
    type: str
    load_seconds: float
    tokens_per_second: float
    bos_count: int  # BOS tokens in the templated prompt (must be exactly one, at the start)
    bos_count_runtime: int = (
        1  # BOS tokens when llama.cpp adds BOS itself to the template without one (llama-cli, Ollama)
    )
    outputs: list[str]
    answers: list[str | None]
    token_ids: list[list[int]]
    parity_ids: list[int] = []  # greedy, no penalties: compared with HF
    perplexity: float | None = None
    perplexity_tokens: int = 0
    perplexity_vs_hf: float | None = None  # relative difference from the HF merged model's perplexity
    quant_loss: float | None = None  # relative perplexity increase over the full-precision GGUF
    seconds: float | None = None  # the child's whole work: load, answers, parity tokens, perplexity pass
    perplexity_seconds: float | None = None


class SmokeReport(StageResult):
    ggufs: list[GGUFFile]
    results: list[SmokeResult]
    parity_tokens: int
    parity_matching: int
    hf_tokens: list[int]
    hf_perplexity: float | None = None
    perplexity_rows: int = 0
    decoding: Decoding | None = None  # the evaluation's, when smoke.use_eval_decoding
    perplexity_on: list[str] = []  # the GGUF types that had the perplexity pass
    parity_near_tie: dict | None = None  # {"token": i, "logit_gap": g}: where a near tie ended the comparison
    hf_dtype: str = "float32"  # the HF reference model's dtype
    warnings: list[str] = []  # format failures recorded instead of raised (require_r1_format off)
    parity_on: str = "F16"  # the GGUF type whose greedy tokens were compared with HF
    ran: list[str] = []  # the GGUF types loaded and answered (r1lib/export/smoke_checks.py: smoke_plan)
    plan: str = "every GGUF"
    timing: str = ""  # where the stage's time went: the HF reference, the wait for each child

    def summary(self) -> dict:
        by_type: dict[str, SmokeResult | None] = {r.type: r for r in self.results}
        return {
            "gguf": [
                {  # None where the proportionate plan did not run the file (its header was checked)
                    "type": g.type,
                    "path": g.path,
                    "mib": round(g.bytes / 2**20, 2),
                    "perplexity": (r := by_type.get(g.type)) and r.perplexity,
                    "perplexity_vs_hf": r and r.perplexity_vs_hf,
                    "quantization_loss": r and r.quant_loss,
                    "smoke_tokens_per_second": r and r.tokens_per_second,
                    "smoke_load_seconds": r and r.load_seconds,
                    "smoke_answer": r and r.answers[0],
                }
                for g in self.ggufs
            ],
            "parity_f16_vs_hf": f"{self.parity_matching}/{self.parity_tokens} greedy tokens equal",
            "parity_on": self.parity_on,
            "smoke_plan": self.plan,
            "parity_perplexity": {
                "hf_merged": self.hf_perplexity,
                "rows": self.perplexity_rows,
                **{r.type: r.perplexity for r in self.results},
            },
        }

    def summary_lines(self) -> list[tuple[str, str]]:
        lines = []
        for g in self.summary()["gguf"]:
            ppl = (
                f"  ppl {g['perplexity']:.4f} (vs HF {g['perplexity_vs_hf']:+.3%}, quant loss "
                f"{g['quantization_loss']:+.3%})"
                if g["perplexity"] is not None and g["perplexity_vs_hf"] is not None
                else ""
            )
            speed = (
                "header checked, not run"
                if g["smoke_load_seconds"] is None
                else (f"{g['smoke_tokens_per_second']:8.1f} tok/s{ppl}  answer {g['smoke_answer']!r}")
            )
            lines.append(("gguf", f"{g['type']:7} {g['mib']:7.2f} MiB  {speed}  {g['path']}"))
        lines.append(
            (
                "parity",
                f"{self.parity_on} GGUF vs HF merged model: {self.parity_matching}/{self.parity_tokens} greedy "
                "tokens equal" + ("" if self.plan == "every GGUF" else f" ({self.plan})"),
            )
        )
        if self.hf_perplexity is not None:
            lines.append(("", f"HF merged perplexity {self.hf_perplexity:.4f} on {self.perplexity_rows} held-out rows"))
        return lines

    def card_section(self) -> str:
        by_type = {r.type: r for r in self.results}
        lines = ["## GGUF files", ""]
        if self.hf_perplexity is not None:
            lines += [
                f"Perplexity on {self.perplexity_rows} held-out rows (answer tokens only) through "
                f"llama-cpp-python; the HF merged model scores {self.hf_perplexity:.6g}. Quantization loss is "
                "the relative perplexity increase over the full-precision GGUF.",
                "",
            ]
        lines += [
            "| file | type | MiB | perplexity | vs HF | quantization loss | smoke tokens/s | load s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for g in self.ggufs:
            r = by_type.get(g.type)
            if r is None:  # not run by the proportionate plan
                lines.append(f"| `{Path(g.path).name}` | {g.type} | {g.bytes / 2**20:.1f} | header checked, not run |")
                continue
            lines.append(
                f"| `{Path(g.path).name}` | {g.type} | {g.bytes / 2**20:.1f} | {_fmt(r.perplexity)} | "
                f"{_fmt(r.perplexity_vs_hf, True)} | {_fmt(r.quant_loss, True)} | "
                f"{_fmt(r.tokens_per_second)} | {_fmt(r.load_seconds)} |"
            )
        lines += [
            "",
            f"Greedy-token parity, {self.parity_on} GGUF vs HF merged model: {self.parity_matching}/"
            f"{self.parity_tokens} tokens equal. Every GGUF {'' if len(by_type) == len(self.ggufs) else 'that ran '}"
            "passed the smoke test (one BOS, closed think block, non-empty answer).",
            "",
        ]
        return "\n".join(lines)


def _fmt(value, pct: bool = False) -> str:
    if value is None:
        return "–"
    if pct:
        return f"{value:+.3%}"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- the child process --------------------------------------------------------------------------------------------


def start_smoke(
    ggufs: list[GGUFFile],
    prompts: list[str],
    cfg: SmokeConfig,
    decoding: Decoding | None = None,
    perplexity_rows: Path | None = None,
    timeout: float | None = None,
    perplexity_types: Collection[str] | None = None,
    parity_on: str | None = None,
) -> SmokeChildren:
    """One child per GGUF, all started at once and sharing the cores (r1lib/export/smoke_run.py); they have
    ``timeout`` (default ``cfg.timeout_s``) per GGUF together. Perplexity over ``perplexity_rows`` is measured for
    the types in ``perplexity_types`` (None: every GGUF); greedy parity tokens come from ``parity_on`` (default: the
    first full-precision GGUF)."""
    verify_digests(ggufs)  # a GGUF whose content is not what the export recorded fails before any child starts
    parity_on = parity_on or next((g.type for g in ggufs if g.type in FULL_PRECISION), None)
    threads = child_threads(cfg.n_threads, len(ggufs))
    jobs = [
        {
            "path": gguf.path,
            "prompts": prompts,
            "max_tokens": cfg.max_tokens,
            "n_ctx": cfg.n_ctx,
            "decoding": decoding.model_dump() if decoding else {},
            "parity_tokens": cfg.parity_tokens if gguf.type == parity_on else 0,
            "perplexity_rows": str(perplexity_rows)
            if perplexity_rows and (perplexity_types is None or gguf.type in perplexity_types)
            else None,
            "n_threads": threads,
            "n_gpu_layers": cfg.n_gpu_layers,
        }
        for gguf in ggufs
    ]
    return SmokeChildren(jobs, (timeout or cfg.timeout_s) * len(ggufs))


def smoke_all(
    ggufs: list[GGUFFile],
    prompts: list[str],
    cfg: SmokeConfig,
    decoding: Decoding | None = None,
    perplexity_rows: Path | None = None,
    timeout: float | None = None,
    warnings: list[str] | None = None,
    perplexity_types: Collection[str] | None = None,
    parity_on: str | None = None,
) -> list[SmokeResult]:
    """``start_smoke``, then every GGUF's checked result; raises ExportCheckError naming the first GGUF that crashes,
    hangs or does not answer every prompt in the R1 format (with ``require_r1_format`` off, format failures are
    appended to ``warnings`` instead)."""
    children = start_smoke(ggufs, prompts, cfg, decoding, perplexity_rows, timeout, perplexity_types, parity_on)
    return checked_results(ggufs, children, cfg, warnings)


def checked_results(
    ggufs: list[GGUFFile], children: SmokeChildren, cfg: SmokeConfig, warnings: list[str] | None
) -> list[SmokeResult]:
    return [_checked(gguf, data, cfg, warnings) for gguf, data in zip(ggufs, children.results())]


def _checked(gguf: GGUFFile, data: dict, cfg: SmokeConfig, warnings: list[str] | None) -> SmokeResult:
    result = SmokeResult(gguf=gguf.path, type=gguf.type, answers=[extract_answer(o) for o in data["outputs"]], **data)
    problems, format_problems = [], []
    if result.bos_count != 1:
        problems.append(f"{result.bos_count} BOS tokens at the start of the templated prompt (expected exactly one)")
    if result.bos_count_runtime != 1:
        problems.append(
            f"{result.bos_count_runtime} BOS tokens when llama.cpp adds BOS to the prompt "
            "(expected exactly one: check tokenizer.ggml.add_bos_token)"
        )
    for prompt_no, (output, answer) in enumerate(zip(result.outputs, result.answers)):
        if answer is None:
            format_problems.append(f"prompt {prompt_no}: no closed <think> block in {output[:200]!r}")
        elif not answer:
            format_problems.append(f"prompt {prompt_no}: empty answer after </think> in {output[:200]!r}")
    if cfg.require_r1_format:
        problems += format_problems
    elif format_problems and warnings is not None:
        warnings += [f"{gguf.type}: {p}" for p in format_problems]
    if problems:
        raise ExportCheckError(f"{gguf.path} failed its smoke test: " + "; ".join(problems))
    return result


def smoke_test(
    merged_dir: str,
    ggufs: list[GGUFFile],
    cfg: SmokeConfig,
    out_dir: Path,
    test_dataset: str | None = None,
    decoding: Decoding | None = None,
    reference: HFReference | None = None,
) -> SmokeReport:
    """The GGUF children, checked against the HF reference: ``reference`` as the flow computed it beside the export
    (``smoke_reference_task``), else computed here while the children run."""
    started = time.monotonic()
    out_dir = Path(out_dir)
    plan = smoke_plan(cfg, ggufs)
    ran = [g for g in ggufs if g.type in plan.run]
    prompts = smoke_prompts(merged_dir, cfg, plan.prompts)
    if reference is not None and (reference.merged_dir != str(merged_dir) or reference.prompt != prompts[0]):
        raise ExportCheckError(
            f"the HF reference was computed for {reference.merged_dir} and prompt {reference.prompt[:80]!r}, not for "
            f"{merged_dir} and {prompts[0][:80]!r}: run the smoke test again"
        )
    if reference is not None:
        reference.check_files()
    measured = [t for t in perplexity_types(cfg, ggufs) if t in plan.run] if cfg.perplexity_rows else []
    if reference is not None:
        rows, n_rows = (Path(reference.rows_path) if reference.rows_path else None), reference.rows
    else:
        rows, n_rows = perplexity_rows(cfg, test_dataset, out_dir, plan.perplexity_tokens) if measured else (None, 0)
    rows, n_rows = (rows, n_rows) if measured else (None, 0)
    children = start_smoke(ran, prompts, cfg, decoding, rows, perplexity_types=measured, parity_on=plan.parity_on)
    beside = reference is not None
    if reference is None:
        try:  # the HF reference while the GGUF children run
            reference = hf_reference(merged_dir, cfg, rows, n_rows, out_dir, prompts[0])
        except BaseException:
            children.stop()
            raise
    tolerance = plan.tolerance
    hf_tokens, hf_logits = reference.tokens, reference_logits(reference) if tolerance > 0 else None
    hf_ppl, dtype = (reference.perplexity if n_rows else None), reference.dtype
    warnings: list[str] = []
    waited = time.monotonic()
    results = checked_results(ran, children, cfg, warnings)
    timing = (
        f"HF reference {reference.seconds:.1f} s "
        f"({'computed beside the export' if beside else 'computed here while the children ran'}), then "
        f"{time.monotonic() - waited:.1f} s waiting for the GGUF children ("
        + ", ".join(f"{r.type} {r.seconds} s, perplexity pass {r.perplexity_seconds} s" for r in results)
        + f"), {time.monotonic() - started:.1f} s in all"
    )
    log.info("smoke test: %s", timing)
    for warning in warnings:
        log.warning("smoke test (require_r1_format off): %s", warning)

    reference = next(r for r in results if r.type == plan.parity_on)
    full = next((r for r in results if r.type in FULL_PRECISION), None)
    for r in results:
        if r.perplexity is not None and hf_ppl:
            r.perplexity_vs_hf = round(r.perplexity / hf_ppl - 1, 6)
        # quantization loss over the full-precision GGUF, or over the HF merged model when that had no pass
        baseline = (full.perplexity if full else None) or hf_ppl
        if r.perplexity is not None and baseline:
            r.quant_loss = round(r.perplexity / baseline - 1, 6)
    gguf_tokens = reference.parity_ids[: cfg.parity_tokens]
    matching, near_tie = compare_greedy(hf_tokens, gguf_tokens, hf_logits, tolerance)
    report = SmokeReport(
        ggufs=ggufs,
        results=results,
        parity_tokens=len(hf_tokens),
        parity_matching=matching,
        hf_tokens=hf_tokens,
        hf_perplexity=hf_ppl,
        perplexity_rows=n_rows,
        decoding=decoding,
        perplexity_on=measured if n_rows else [],
        parity_near_tie=near_tie,
        hf_dtype=dtype,
        warnings=warnings,
        parity_on=plan.parity_on,
        ran=plan.run,
        plan=plan.reason,
        timing=timing,
    )
    write_json(out_dir / "smoke.json", report.model_dump())

    problems = not_finite({"the HF merged model": hf_ppl, **{r.gguf: r.perplexity for r in results}})
    if near_tie:
        log.warning(
            "greedy parity: equal for %d tokens, then a near tie (HF logit gap %s <= %s) decided by rounding",
            matching,
            near_tie["logit_gap"],
            tolerance,
        )
    elif matching < len(hf_tokens):
        problems.append(f"{reference.gguf}: {divergence(plan, hf_tokens, gguf_tokens, hf_logits, matching)}")
    if full and full.perplexity_vs_hf is not None and abs(full.perplexity_vs_hf) > cfg.max_f16_perplexity_drift:
        problems.append(
            f"{full.gguf}: perplexity {full.perplexity} vs HF {hf_ppl} "
            f"({full.perplexity_vs_hf:+.2%}, limit {cfg.max_f16_perplexity_drift:.2%})"
        )
    if cfg.max_quant_perplexity_increase is not None:
        baseline_name = f"the {full.type} GGUF" if full else "the HF merged model"
        problems += [
            f"{r.gguf}: perplexity {r.perplexity} is {r.quant_loss:+.2%} over {baseline_name} "
            f"(limit {cfg.max_quant_perplexity_increase:.2%})"
            for r in results
            if r.quant_loss is not None and r.quant_loss > cfg.max_quant_perplexity_increase
        ]
    if problems:
        raise ExportCheckError("; ".join(problems))
    return report


def divergence(plan: SmokePlan, hf_tokens: list[int], gguf_tokens: list[int], hf_logits, step: int) -> str:
    """The parity failure in words: where the tokens part, HF's logit gap there and the setting that accepts it."""
    setting = "parity_logit_tolerance" if plan.parity_on in FULL_PRECISION else "quantized_parity_logit_tolerance"
    if step >= len(gguf_tokens):
        why = f"the GGUF stopped after {len(gguf_tokens)} tokens"
    elif hf_logits is None:
        why = f"no logit gap measured (smoke.{setting} is 0)"
    else:
        gap = logit_gap(hf_logits, hf_tokens, gguf_tokens, step)
        why = f"HF scored the GGUF's token {gap:.4g} logits below its own, past smoke.{setting}={plan.tolerance:g}"
    return f"greedy tokens diverge from the HF merged model at token {step} ({why}): HF {hf_tokens} vs {gguf_tokens}"


def _share(value: float | None) -> str:
    return "" if value is None else f"{value:+.3%}"


def _short(text: str | None, chars: int) -> str:
    text = text or ""
    return text if len(text) <= chars else text[: chars - 1] + "…"


def smoke_table(report: SmokeReport, answer_chars: int = 40) -> list[dict]:
    """One short row per GGUF for the UI, narrow enough for a laptop screen: the files' folder is in the description,
    the full answers in smoke/ and summary.json."""
    return [
        {
            "GGUF": r.type,
            "MiB": round(Path(r.gguf).stat().st_size / 2**20, 1),
            "load s": r.load_seconds,
            "tokens/s": r.tokens_per_second,
            "perplexity": None if r.perplexity is None else float(f"{r.perplexity:.5g}"),
            "vs HF": _share(r.perplexity_vs_hf),
            "quant loss": _share(r.quant_loss),
            "answer": _short(r.answers[0] if r.answers else None, answer_chars),
        }
        for r in report.results
    ]


def smoke_description(report: SmokeReport) -> str:
    decoding = report.decoding.model_dump() if report.decoding else "greedy"
    folder = Path(report.results[0].gguf).parent if report.results else None
    hf = "n/a" if report.hf_perplexity is None else f"{report.hf_perplexity:.5g}"
    return (
        f"GGUF smoke test of `{folder}`. F16 greedy parity with HF: {report.parity_matching}/{report.parity_tokens} "
        f"tokens. HF merged perplexity {hf} on {report.perplexity_rows} held-out rows; *vs HF*: each GGUF's "
        f"perplexity against it, *quant loss*: against the first GGUF. Decoding {decoding}."
    )


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="smoke-reference", task_run_name="smoke reference (HF merged model)", **stage_options(timeout_seconds=3600))
def smoke_reference_task(
    merged_dir: InputPath, test_dataset: InputPath | None, cfg: SmokeConfig, out_dir: OutputPath
) -> HFReference:
    """The smoke test's HF side (r1lib/export/hf_reference.py): the merged model's greedy parity tokens and held-out
    perplexity, computed on the GPU as soon as the merge and evaluation are done, beside convert and quantize."""
    budget = perplexity_budget(cfg, proportionate_on(cfg, full_precision_bytes(merged_dir)))
    rows, n_rows = perplexity_rows(cfg, test_dataset, Path(out_dir), budget)
    reference = hf_reference(merged_dir, cfg, rows, n_rows, Path(out_dir))
    print(f"HF reference ({reference.dtype}) in {reference.seconds:.1f} s: {len(reference.tokens)} greedy tokens")
    return reference


@task(name="smoke-test", task_run_name="smoke-test", **stage_options(retries=1, timeout_seconds=3600))
def smoke_task(
    merged_dir: InputPath,
    ggufs: list[GGUFFile],
    test_dataset: InputPath | None,
    decoding: Decoding,
    cfg: SmokeConfig,
    out_dir: OutputPath,
    reference: HFReference | None = None,
) -> SmokeReport:
    """Load every GGUF in llama-cpp-python, answer in the R1 format, check parity (tokens, perplexity) with HF.
    ``decoding``: the evaluate stage's generation settings (used when ``smoke.use_eval_decoding``); ``reference``:
    the HF side from ``smoke_reference_task`` (None: computed here, beside the GGUF children)."""
    report = smoke_test(
        merged_dir, ggufs, cfg, Path(out_dir), test_dataset, decoding if cfg.use_eval_decoding else None, reference
    )
    print(f"smoke test: {report.timing}")
    create_table_artifact(key="gguf-smoke-test", table=smoke_table(report), description=smoke_description(report))
    return report
