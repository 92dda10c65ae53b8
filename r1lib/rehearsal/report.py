"""The rehearsal's result: one JSON and one dated Markdown table per rehearsal (``bench/results/`` or any folder).

rehearsal-<shape>[-cap<GiB>]-<date>.json   shape, gpu_cap_gib, completed, total_seconds, train_seconds,
                                           export_seconds, stages {name: {seconds, share, peak_gpu_*_gib,
                                           peak_rss_gib, disk_written_gib}}, eval_generation {tokens_per_s,
                                           hf_generate_tokens_per_s, speedup}, grpo {seconds_per_step,
                                           generated_tokens_per_s, peak_gpu_*_gib} (--grpo-steps), and what the run was
rehearsal-<shape>[-cap<GiB>]-<date>.md     the same as tables
"""

from __future__ import annotations

import json
from pathlib import Path

from r1lib.io import write_json, write_text
from r1lib.stages import group_of

TEN_MINUTES = 600.0


def group_seconds(stages: dict[str, dict]) -> dict[str, float]:
    """Seconds per part of the flow, each stage in its declared group (r1lib/stages.py): data, train, evaluate
    (evaluate, fairness), export (merge + convert + quantize), smoke, card (card, summary)."""
    groups = {"data": 0.0, "train": 0.0, "evaluate": 0.0, "export": 0.0, "smoke": 0.0, "card": 0.0}
    for name, row in stages.items():
        groups[group_of(name)] += row["seconds"]
    return {k: round(v, 2) for k, v in groups.items()}


def targets(result: dict) -> dict:
    """The issue's targets, read from the measured figures (None where the run did not get that far)."""
    total, train = result["total_seconds"], result["train_seconds"]
    steps_s = result.get("train", {}).get("loop_seconds")
    non_training = total - train if train else None
    fixed_train = train - steps_s if train and steps_s is not None else None
    at_ten = (
        round((non_training + fixed_train) / (non_training + fixed_train + TEN_MINUTES), 4)
        if non_training is not None and fixed_train is not None
        else None
    )
    eval_gen = result.get("eval_generation") or {}
    caps = [row.get("peak_gpu_reserved_gib") for row in result["stages"].values()]
    caps = [c for c in caps if c is not None]
    return {
        "non_training_share": round(non_training / total, 4) if non_training is not None and total else None,
        "non_training_share_at_10_min_of_steps": at_ten,
        "non_training_share_target": "<= 0.30",
        "export_seconds": result["export_seconds"],
        "export_seconds_target": "<= 120",
        "after_training_seconds": result.get("after_training_seconds"),
        "after_training_seconds_target": "<= 180",
        "total_seconds": result["total_seconds"] if result["completed"] else None,
        "total_seconds_target": f"<= {TEN_MINUTES:g}, completed",
        "eval_speedup": eval_gen.get("speedup"),
        "eval_speedup_target": ">= 10",
        "peak_gpu_reserved_gib": max(caps) if caps else None,
        "peak_gpu_reserved_target": f"< {result['gpu_cap_gib']}" if result.get("gpu_cap_gib") else None,
    }


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(result: dict) -> str:
    cap = f", GPU capped at {result['gpu_cap_gib']} GiB" if result.get("gpu_cap_gib") else ""
    lines = [
        f"# Rehearsal: {result['shape']}{cap}, {result['date']}",
        "",
        f"**{result['headline']}**",
        "",
        f"`{result['command']}` on {result['device']} ({result['cpus']} CPUs). Random weights of the real shape "
        f"({result['model']['params'] / 1e9:.2f}B parameters), the real tokenizer and R1 chat template, "
        f"{result['data']['train']['rows']} train / {result['data']['test']['rows']} test R1-like rows. "
        f"Completed: **{result['completed']}**" + (f" ({result['error']})" if result.get("error") else "") + ".",
        "",
        "| stage | start–end s | seconds | share | peak GPU allocated GiB | peak GPU reserved GiB | device used GiB | "
        "peak RSS GiB | disk written GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in result["stages"].items():
        span = f"{_fmt(row['start_s'])}–{_fmt(row['end_s'])}" if row.get("start_s") is not None else "–"
        lines.append(
            f"| {name} | {span} | {_fmt(row['seconds'])} | {row['share']:.1%} | "
            f"{_fmt(row['peak_gpu_allocated_gib'], 2)} | "
            f"{_fmt(row['peak_gpu_reserved_gib'], 2)} | {_fmt(row['peak_device_used_gib'], 2)} | "
            f"{_fmt(row['peak_rss_gib'], 2)} | {_fmt(row['disk_written_gib'], 2)} |"
        )
    lines.append(f"| **flow total** | | **{_fmt(result['total_seconds'])}** | 100% | | | | | |")
    if result.get("critical_path"):
        lines += ["", f"Critical path: {' -> '.join(result['critical_path'])}."]
    groups = result["groups"]
    lines += [
        "",
        "| part | seconds |",
        "|---|---:|",
        *[f"| {k} | {_fmt(v)} |" for k, v in groups.items()],
        f"| outside the stages (Prefect start, scheduling) | {_fmt(result['outside_stages_seconds'])} |",
        f"| built before the flow (rehearsal only): model | {_fmt(result['model']['seconds'])} |",
        f"| built before the flow (rehearsal only): data | {_fmt(result['data']['seconds'])} |",
        "",
    ]
    train = result.get("train") or {}
    if train:
        lines += [
            f"Training: {train.get('steps')} steps, {train.get('tokens'):,} tokens in "
            f"{_fmt(train.get('loop_seconds'))} s of steps ({_fmt(train.get('tokens_per_second'))} tokens/s; "
            f"{train.get('backend')}; {train.get('memory_plan')}).",
            "",
        ]
    grpo = result.get("grpo") or {}
    if grpo.get("error"):
        lines += [f"GRPO stage (after the flow, from its adapter): {grpo['error']}.", ""]
    elif grpo:
        lines += [
            f"GRPO stage (after the flow, from its adapter; {grpo.get('backend')}): {grpo.get('steps')} steps of "
            f"{grpo.get('completions_per_step')} completions ({grpo.get('num_generations')} per prompt, up to "
            f"{grpo.get('max_completion_length')} tokens; mean {_fmt(grpo.get('mean_completion_length'))}): "
            f"**{_fmt(grpo.get('seconds_per_step'), 2)} s per step**, {_fmt(grpo.get('generated_tokens_per_s'))} "
            f"generated tokens/s, peak GPU reserved {_fmt(grpo.get('peak_gpu_reserved_gib'), 2)} GiB "
            f"(allocated {_fmt(grpo.get('peak_gpu_allocated_gib'), 2)} GiB).",
            "",
        ]
    gen = result.get("eval_generation") or {}
    if gen:
        lines += [
            f"Evaluation generation ({gen.get('mode')}, {gen.get('decoder', 'HF generate')}, batch {gen.get('batch')}, "
            "max_new_tokens "
            f"{gen.get('max_new_tokens')}): base {_fmt(gen.get('base_tokens_per_s'))} tokens/s, fine-tuned "
            f"{_fmt(gen.get('tokens_per_s'))} tokens/s; plain HF generate on the 4-bit model with the adapter "
            f"attached {_fmt(gen.get('hf_generate_tokens_per_s'))} tokens/s ({_baseline(gen)}): "
            f"**{_fmt(gen.get('speedup'), 2)}x**. "
            "Truncated thinking (reached max_new_tokens inside the think block): base "
            f"{gen.get('base_truncated_thinking')}, fine-tuned {gen.get('truncated_thinking')} of "
            f"{gen.get('generated')} (random weights never end a sentence: every row runs to max_new_tokens, "
            "the longest a user waits).",
            "",
        ]
    t = result["targets"]
    lines += [
        "| target | measured | goal |",
        "|---|---:|---:|",
        f"| non-training share of the wall time | {_pct(t['non_training_share'])} | {t['non_training_share_target']} |",
        f"| the same with 10 minutes of training steps | {_pct(t['non_training_share_at_10_min_of_steps'])} | "
        f"{t['non_training_share_target']} |",
        f"| export (merge + the requested GGUF types, wall), s | {_fmt(t['export_seconds'])} | "
        f"{t['export_seconds_target']} |",
        f"| end of training to the summary, s | {_fmt(t['after_training_seconds'])} | "
        f"{t['after_training_seconds_target']} |",
        f"| whole flow, s | {_fmt(t['total_seconds'])} | {t['total_seconds_target']} |",
        f"| evaluation generation speed-up over plain HF generate | {_fmt(t['eval_speedup'], 2)} | "
        f"{t['eval_speedup_target']} |",
    ]
    if t["peak_gpu_reserved_target"]:
        lines.append(
            f"| peak GPU reserved in any stage, GiB | {_fmt(t['peak_gpu_reserved_gib'], 2)} | "
            f"{t['peak_gpu_reserved_target']} |"
        )
    lines += ["", *[f"- {note}" for note in result.get("notes", [])], ""]
    if result.get("summary_text"):
        lines += ["```", result["summary_text"], "```", ""]
    return "\n".join(lines)


def _baseline(gen: dict) -> str:
    timed = gen.get("hf_generate") or {}
    if not timed:
        return "not timed"
    return f"{timed['rows']} rows at once, up to {timed.get('max_new_tokens', '?')} new tokens each"


def _pct(value) -> str:
    return "–" if value is None else f"{value:.1%}"


def result_name(shape: str, cap: float | None, date: str, tag: str = "") -> str:
    name = f"rehearsal-{shape}" + (f"-cap{cap:g}" if cap else "") + f"-{date}"
    return name + (f"-{tag}" if tag else "")


def headline(result: dict) -> str:
    """One line for the README: ``r1-qwen-7b on 1x NVIDIA H200: data 20 s, train 150 s for 1.2M tokens, ...``."""
    g = result["groups"]
    tokens = (result.get("train") or {}).get("tokens")
    cap = f" under a {result['gpu_cap_gib']:g} GiB cap" if result.get("gpu_cap_gib") else ""
    return (
        f"{result['shape']} on {result['device']}{cap}: data {g['data']:.0f} s, train {g['train']:.0f} s"
        + (f" for {tokens / 1e6:.2f}M tokens" if tokens else "")
        + f", eval {g['evaluate']:.0f} s, export {g['export']:.0f} s, smoke {g['smoke']:.0f} s; "
        f"{result['total_seconds']:.0f} s in all" + ("" if result["completed"] else " (did not complete)")
    )


def write_result(result: dict, out_dir: Path, tag: str = "") -> tuple[Path, Path]:
    result["groups"] = group_seconds(result["stages"])
    result["targets"] = targets(result)
    result["headline"] = headline(result)
    name = result_name(result["shape"], result.get("gpu_cap_gib"), result["date"], tag)
    out_dir = Path(out_dir)
    json_path = write_json(out_dir / f"{name}.json", result)
    md_path = write_text(out_dir / f"{name}.md", markdown(result))
    return json_path, md_path


def read_result(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
