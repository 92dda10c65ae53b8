"""The run summary: the key figure of every stage in one ``summary.json`` beside the run's outputs."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.augment import AugmentedData
from r1lib.config import PipelineConfig
from tasks.debias import DebiasedData
from tasks.evaluate import Evaluation, comparison_table
from tasks.export import GGUFFile
from r1lib.io import write_json
from r1lib.paths import resolve_roots
from tasks.smoke import SmokeReport
from tasks.tokenize import TokenizedData
from tasks.train import TrainResult
from tasks.validate import ValidatedData


def summarize(config: PipelineConfig, data: ValidatedData, augmented: AugmentedData, debiased: DebiasedData,
              tokenized: TokenizedData, trained: TrainResult, evaluation: Evaluation, ggufs: list[GGUFFile],
              smoke: SmokeReport) -> dict:
    smoke_by_type = {r.type: r for r in smoke.results}
    return {
        "preset": config.preset,
        "model": config.model.name_or_path,
        "trust_remote_code": config.model.trust_remote_code,
        # The roots in force, as this machine resolved them ({project}, {hf_cache}, relative paths filled in).
        "allowed_roots": {"data": resolve_roots(config.data.allowed_roots),
                          "model": resolve_roots(config.model.allowed_roots)},
        "data": {"rows_read": data.rows_in, "quarantined": data.quarantined, "quarantine": data.quarantine,
                 "per_file": {r.file: {"accepted": r.accepted, "quarantined": r.quarantined, "reasons": r.reasons}
                              for r in data.reports}},
        "augment": {"rows_in": augmented.rows_in, "rows_out": augmented.rows_out, "origins": augmented.origins},
        "debias": {"blocked": debiased.blocked, "counterfactuals": debiased.counterfactuals,
                   "balance": [b.model_dump() for b in debiased.balance]},
        "tokenize": {"rows": tokenized.rows_out, "dropped_too_long": tokenized.dropped_too_long,
                     "truncated": tokenized.truncated, "masked_share": round(1 - tokenized.trained_tokens / tokenized.tokens, 3)},
        "train": trained.model_dump(include={"backend", "steps", "first_loss", "last_loss", "seconds",
                                             "tokens_per_second", "steady_tokens_per_second", "resumed_from",
                                             "micro_batch_size", "gradient_accumulation", "processes", "launch",
                                             "oom_retries", "adapter"}),
        "evaluate": {
            "perplexity_before": evaluation.base.perplexity, "perplexity_after": evaluation.tuned.perplexity,
            "accuracy_before": evaluation.base.accuracy, "accuracy_after": evaluation.tuned.accuracy,
            "format_ok_before": evaluation.base.format_ok, "format_ok_after": evaluation.tuned.format_ok,
            "replay_perplexity_before": evaluation.base.replay_perplexity,
            "replay_perplexity_after": evaluation.tuned.replay_perplexity,
            "forgetting_ratio": evaluation.forgetting_ratio,
            "accuracy_normalized_before": evaluation.base.accuracy_normalized,
            "accuracy_normalized_after": evaluation.tuned.accuracy_normalized,
            "empty_thinking_before": evaluation.base.empty_thinking,
            "empty_thinking_after": evaluation.tuned.empty_thinking,
            "repetition_rate_before": evaluation.base.repetition_rate,
            "repetition_rate_after": evaluation.tuned.repetition_rate,
            "answer_tokens": evaluation.tuned.answer_tokens,
            "generated": evaluation.tuned.generated,
            "stopped_by_time_limit": evaluation.base.stopped_by_time_limit or evaluation.tuned.stopped_by_time_limit,
            "forgetting_limit": evaluation.forgetting_limit,
            "forgetting_exceeded": evaluation.forgetting_exceeded,
            "decoding": evaluation.decoding,
            "lm_eval": {"status": evaluation.lm_eval_status, "before": evaluation.base.lm_eval,
                        "after": evaluation.tuned.lm_eval},
            "comparison": comparison_table(evaluation),
        },
        "gguf": [{"type": g.type, "path": g.path, "mib": round(g.bytes / 2**20, 2),
                  "perplexity": smoke_by_type[g.type].perplexity,
                  "perplexity_vs_hf": smoke_by_type[g.type].perplexity_vs_hf,
                  "quantization_loss": smoke_by_type[g.type].quant_loss,
                  "smoke_tokens_per_second": smoke_by_type[g.type].tokens_per_second,
                  "smoke_load_seconds": smoke_by_type[g.type].load_seconds,
                  "smoke_answer": smoke_by_type[g.type].answers[0]} for g in ggufs],
        "parity_f16_vs_hf": f"{smoke.parity_matching}/{smoke.parity_tokens} greedy tokens equal",
        "parity_perplexity": {"hf_merged": smoke.hf_perplexity, "rows": smoke.perplexity_rows,
                              **{r.type: r.perplexity for r in smoke.results}},
        "deploy": deploy_files(ggufs),
    }


def deploy_files(ggufs: list[GGUFFile]) -> dict:
    """The model card and Modelfiles beside the GGUFs (written by tasks/card.py), where present."""
    folder = Path(ggufs[0].path).parent if ggufs else None
    if folder is None or not (folder / "README.md").exists():
        return {}
    return {"model_card": str(folder / "README.md"), "modelfile": str(folder / "Modelfile"),
            "loss_curve": str(folder / "loss_curve.png") if (folder / "loss_curve.png").exists() else None}


def render(summary: dict) -> str:
    """The summary as a short plain-text report for the terminal."""
    ev, data, train = summary["evaluate"], summary["data"], summary["train"]
    lines = [
        f"r1-finetune run summary ({summary['preset']}: {summary['model']})",
        f"  data       {data['rows_read']} rows read, {data['quarantined']} quarantined -> {data['quarantine']}",
        f"  roots      data {', '.join(summary['allowed_roots']['data'])}; "
        f"model {', '.join(summary['allowed_roots']['model'])}",
        f"  augment    {summary['augment']['rows_in']} -> {summary['augment']['rows_out']} rows {summary['augment']['origins']}",
        f"  debias     {summary['debias']['blocked']} blocked, {summary['debias']['counterfactuals']} counterfactuals; "
        + ", ".join(f"{b['groups']} ratio {b['ratio_before']} -> {b['ratio_after']}" for b in summary["debias"]["balance"]),
        f"  tokenize   {summary['tokenize']['rows']} rows, masked share {summary['tokenize']['masked_share']}, "
        f"{summary['tokenize']['dropped_too_long']} too long",
        f"  train      {train['backend']}: {train['steps']} steps, loss {train['first_loss']:.3f} -> {train['last_loss']:.3f}, "
        f"{train['seconds']} s ({train['tokens_per_second']} tokens/s)",
        f"  evaluate   perplexity {ev['perplexity_before']:.2f} -> {ev['perplexity_after']:.2f}; "
        f"accuracy {ev['accuracy_before']:.0%} -> {ev['accuracy_after']:.0%}; "
        f"format {ev['format_ok_before']:.0%} -> {ev['format_ok_after']:.0%}; forgetting ratio {ev['forgetting_ratio']}",
    ]
    if "accuracy_normalized_after" in ev:
        lines.append(
            f"             normalized accuracy {ev['accuracy_normalized_before']:.0%} -> {ev['accuracy_normalized_after']:.0%}; "
            f"repetition {ev['repetition_rate_before']} -> {ev['repetition_rate_after']}; "
            f"forgetting limit {ev['forgetting_limit']}" + (" EXCEEDED" if ev["forgetting_exceeded"] else " ok")
            + f"; lm_eval: {ev['lm_eval']['status']}")
    for g in summary["gguf"]:
        ppl = (f"  ppl {g['perplexity']:.4f} (vs HF {g['perplexity_vs_hf']:+.3%}, quant loss {g['quantization_loss']:+.3%})"
               if g.get("perplexity") is not None and g.get("perplexity_vs_hf") is not None else "")
        lines.append(f"  gguf       {g['type']:7} {g['mib']:7.2f} MiB  {g['smoke_tokens_per_second']:8.1f} tok/s{ppl}  "
                     f"answer {g['smoke_answer']!r}  {g['path']}")
    lines.append(f"  parity     F16 GGUF vs HF merged model: {summary['parity_f16_vs_hf']}")
    pp = summary.get("parity_perplexity") or {}
    if pp.get("hf_merged") is not None:
        lines.append(f"             HF merged perplexity {pp['hf_merged']:.4f} on {pp['rows']} held-out rows")
    if summary.get("deploy"):
        lines.append(f"  deploy     {summary['deploy']['model_card']}; ollama create <name> -f {summary['deploy']['modelfile']}")
    return "\n".join(lines)


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="summary")
def summary_task(config: PipelineConfig, run_dir: str, **results) -> dict:
    """Write summary.json and show it in the UI."""
    summary = summarize(config, **results)
    summary["run_dir"] = run_dir
    write_json(Path(run_dir) / "summary.json", summary)
    create_markdown_artifact(key="run-summary", markdown=f"```\n{render(summary)}\n```")
    return summary
