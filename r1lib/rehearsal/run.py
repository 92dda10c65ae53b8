"""The rehearsal (``python -m flows.rehearse``, which see): a random-weight model of a real shape, R1-like data of
realistic lengths, the real finetune flow on them, a sampler measuring every stage, and the result as one JSON and
one Markdown table (report.py).

``rehearse(argv, flow)`` does it all; the entry in flows/ hands it the finetune flow, and the figures come from that
flow's typed result (``FinetuneResult``), never from the run folder's files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from r1lib.errors import ConfigError
from r1lib.process import restored_environ
from r1lib.stages import group_of, out_dir

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str]) -> argparse.Namespace:
    from r1lib.rehearsal.shapes import SHAPES

    def pair(text: str) -> tuple[int, int]:
        low, high = (int(x) for x in text.split(","))
        return low, high

    parser = argparse.ArgumentParser(
        prog="python -m flows.rehearse", description="Rehearse the whole finetune flow at a real model's size."
    )
    parser.add_argument("--shape", required=True, choices=sorted(SHAPES))
    parser.add_argument("--gpu-cap-gib", type=float, default=None, help="train.max_gpu_memory_gib for the run")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--test-rows", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=pair, default=(50, 300))
    parser.add_argument("--completion-tokens", type=pair, default=(300, 3000))
    parser.add_argument("--eval-max-new-tokens", type=int, default=1024)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--eval-time-limit", type=float, default=240, help="seconds of generation per model")
    parser.add_argument(
        "--baseline-rows", type=int, default=None, help="rows of the plain HF generate timing (default: one batch)"
    )
    parser.add_argument("--smoke-tokens", type=int, default=32)
    parser.add_argument(
        "--grpo-steps", type=int, default=0, help="GRPO steps after the flow, from its adapter (0: none)"
    )
    parser.add_argument(
        "--grpo-generations", type=int, default=None, help="train.grpo.num_generations (default: the run's)"
    )
    parser.add_argument(
        "--grpo-completion-tokens", type=int, default=None, help="train.grpo.max_completion_length (default: the run's)"
    )
    parser.add_argument(
        "--grpo-micro-batch", type=int, default=None, help="completions per micro-batch of the GRPO stage (default: "
        "one group, train.grpo.num_generations); a multiple of the group",
    )  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field")
    parser.add_argument("--work", default="/tmp/r1-rehearse", help="scratch folder (model, data, run)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"), help="where the JSON and table go")
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder afterwards")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted rehearsal in --work")
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=None,
        help="seconds after the start at which to write the table of what has run and exit with status 3",
    )
    return parser.parse_args(argv)


def disk_plan(shape: str, folder: Path) -> dict:
    """Bytes the run writes at its peak (base, merged, F16, Q8_0, Q4_K_M) against the free disk: whether the base
    weights must go once merged, or the run cannot fit at all."""
    from r1lib.model.shape import ModelShape
    from r1lib.rehearsal.shapes import model_config

    config = model_config(shape).to_dict()
    shape_info = ModelShape.of_config(config)
    params = shape_info.params
    base = merged = f16 = 2 * params
    quantized = int(params * (1.07 + 0.6))
    margin = 3 * 2**30  # datasets, checkpoints, logs, Prefect
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    need_all = base + merged + f16 + quantized + margin
    need_without_base = max(base + merged, merged + f16 + quantized) + margin
    return {
        "params": params,
        "free_gib": round(free / 2**30, 1),
        "need_gib": round(need_all / 2**30, 1),
        "need_without_base_gib": round(need_without_base / 2**30, 1),
        "delete_base_after_merge": free < need_all,
        "fits": free >= need_without_base,
    }


CPU_TRAINING = {"train.micro_batch_size": 1, "train.gradient_accumulation": 1}


def rehearsal_config(args, model_dir: Path, data: dict, work: Path):
    from r1lib.presets import preset, set_field
    from r1lib.rehearsal.meter import cpu_count
    from r1lib.rehearsal.shapes import SHAPES

    config = preset(SHAPES[args.shape]["preset"]).model_dump()
    overrides = {
        "run_name": f"rehearse-{args.shape}",
        "runs_dir": str(work / "runs"),
        "cache_dir": str(work / "cache"),
        "model.name_or_path": str(model_dir),
        "model.allowed_roots": [str(work)],
        "data.train_paths": [data["train"]["path"]],
        "data.test_path": data["test"]["path"],
        "data.allowed_roots": [str(work), str(ROOT / "data")],
        "train.max_steps": args.train_steps,
        "train.max_gpu_memory_gib": args.gpu_cap_gib,
        "evaluate.max_examples": args.test_rows,
        "evaluate.batch_size": args.eval_batch,
        "evaluate.max_new_tokens": args.eval_max_new_tokens,
        "evaluate.time_limit_s": args.eval_time_limit,
        "evaluate.baseline_rows": args.eval_batch if args.baseline_rows is None else args.baseline_rows,
        "evaluate.baseline_tokens": args.eval_max_new_tokens,  # the baseline at the pipeline's own length
        "export.quantizations": ["Q4_K_M", "Q8_0"],
        "export.keep_full_precision": False,  # the F16 is the quantizer's input only
        "smoke.max_tokens": args.smoke_tokens,
        "smoke.parity_tokens": 16,
        "smoke.perplexity_rows": 8,
        "smoke.perplexity_max_tokens": 2048,
        "smoke.n_threads": cpu_count(),
        "smoke.require_r1_format": False,  # random weights cannot answer in the format
        "smoke.parity_logit_tolerance": 0.25,  # random weights: near ties everywhere (README)
        # Q8_0 moved the prompt logits of the Llama-8B layout's random weights by up to 0.36 (4 layers) and 0.46
        # (8 layers; F16: 0.014), about as the square root of depth: near 0.9 at 32, where the default 0.5 failed.
        "smoke.quantized_parity_logit_tolerance": 1.0,
    }
    import torch

    if not torch.cuda.is_available():  # 8 rows of 4,096 tokens (a GPU preset) hold 20 GB of logits on a CPU
        overrides |= CPU_TRAINING
        print(f"[rehearse] no CUDA device: training sized for a CPU {CPU_TRAINING} (--set overrides it)", flush=True)
    for key, value in overrides.items():
        set_field(config, f"{key}={json.dumps(value)}")
    for item in args.set:
        set_field(config, item)
    from r1lib.config import PipelineConfig

    return PipelineConfig.model_validate(config)


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()}x {torch.cuda.get_device_name()}"
    return f"CPU ({socket.gethostname()})"


def run_flow(flow: Callable[[Any], Any], config, sampler) -> tuple[Any | None, str | None]:
    sampler.start()
    try:
        return flow(config), None
    except BaseException as exc:  # noqa: BLE001  (any failure is the rehearsal's finding: record it, write the table)
        traceback.print_exc()
        return None, f"{type(exc).__name__}: {str(exc)[:400]}"


def collect(result) -> dict:
    """Training, evaluation and export figures from the flow's result (a ``FinetuneResult``: flows/finetune.py); none
    after a failure or at the deadline (the stage table still has every stage's time)."""
    out: dict = {}
    trained = getattr(result, "trained", None)
    if trained is not None:
        t = trained.model_dump()
        out["train"] = {
            "backend": t["backend"],
            "steps": t["steps"],
            "loop_seconds": t["seconds"],
            "tokens_per_second": t["tokens_per_second"],
            "steady_tokens_per_second": t.get("steady_tokens_per_second"),
            "tokens": int(t["tokens_per_second"] * t["seconds"]),
            "micro_batch_size": t["micro_batch_size"],
            "gradient_accumulation": t["gradient_accumulation"],
            "gradient_checkpointing": t.get("gradient_checkpointing"),
            "memory_plan": t.get("memory_plan"),
            "oom_retries": t.get("oom_retries"),
        }
    evaluation = getattr(result, "evaluation", None)
    if evaluation is not None and evaluation.base.generation and evaluation.tuned.generation:
        base, tuned, speed = evaluation.base.generation, evaluation.tuned.generation, evaluation.speed
        out["eval_generation"] = {
            "mode": speed.get("mode"),
            "decoder": tuned.decoder,
            "batch": speed.get("batch"),
            "reason": speed.get("reason"),
            "max_new_tokens": evaluation.decoding.max_new_tokens,
            "generated": tuned.generated,
            "tokens_per_s": tuned.tokens_per_second,
            "base_tokens_per_s": base.tokens_per_second,
            "hf_generate_tokens_per_s": speed.get("hf_generate_tokens_per_s"),
            "hf_generate": speed.get("hf_generate"),
            "speedup": speed.get("speedup"),
            "truncated_thinking": tuned.truncated_thinking,
            "base_truncated_thinking": base.truncated_thinking,
            "new_tokens": base.new_tokens + tuned.new_tokens,
        }
    ggufs = getattr(result, "ggufs", None)
    if ggufs:
        out["ggufs"] = {Path(g.path).name: round(g.bytes / 2**30, 2) for g in sorted(ggufs, key=lambda g: g.path)}
    smoke = getattr(result, "smoke", None)
    if smoke is not None:
        out["smoke"] = {
            "parity": f"{smoke.parity_matching}/{smoke.parity_tokens}",
            "parity_near_tie": smoke.parity_near_tie,
            "perplexity_on": smoke.perplexity_on,
            "hf_dtype": smoke.hf_dtype,
            "tokens_per_second": {r.type: r.tokens_per_second for r in smoke.results},
            "format_warnings": len(smoke.warnings),
            "timing": smoke.timing,
        }
    summary = getattr(result, "summary", None)
    if summary is not None:
        out["summary_text"] = summary.text
    return out


# The variables the rehearsal sets for its own Prefect home, restored when it returns.
REHEARSAL_ENVIRON = (
    "PREFECT_HOME",
    "R1_RESULT_STORAGE",
    "PREFECT_SERVER_ANALYTICS_ENABLED",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS",
)


def rehearse(argv: list[str], flow: Callable[[Any], Any]) -> int:
    """The rehearsal ``python -m flows.rehearse`` runs; ``flow``: the finetune flow, called with the configuration
    once this process has its own Prefect home (import Prefect and the flow inside it, not before). The process's
    environment is as it was when it returns: a caller that goes on (a test) does not inherit the removed home."""
    with restored_environ(REHEARSAL_ENVIRON):
        return _rehearse(argv, flow)


def _rehearse(argv: list[str], flow: Callable[[Any], Any]) -> int:
    args = parse_args(argv)
    work = Path(args.work) / args.shape
    if work.exists() and not args.resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    # Its own Prefect home and no shared result storage: a stage cached by an earlier run would hide its cost.
    os.environ["PREFECT_HOME"] = str(work / "prefect-home")
    os.environ.pop("R1_RESULT_STORAGE", None)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # a fresh Prefect home creates its database first: more than the default 20 s on a busy machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

    from r1lib.rehearsal.data import write_r1_data
    from r1lib.rehearsal.meter import Sampler, cpu_count, now_utc
    from r1lib.rehearsal.shapes import build_random_model, shape_tokenizer

    began_all = time.monotonic()
    command = "python -m flows.rehearse " + " ".join(argv)
    started_at = now_utc()
    disk = disk_plan(args.shape, work)
    print(f"[rehearse] disk: {disk}", flush=True)
    notes = [
        "random weights: generations never reach the end-of-sentence token, so evaluation and smoke test run to "
        "their token limits; the smoke test records the R1 format instead of requiring it, and accepts a greedy "
        "near tie within 0.25 logits (about the mean gap between the top two logits of a random 7B model), or "
        "within 1.0 where parity is checked on a quantized file (Q8_0 noise on random weights)"
    ]
    record = {
        "shape": args.shape,
        "gpu_cap_gib": args.gpu_cap_gib,
        "completed": False,
        "date": started_at.strftime("%Y-%m-%d"),
        "started_at": started_at.isoformat(timespec="seconds"),
        "command": command,
        "device": device_name(),
        "cpus": cpu_count(),
        "disk": disk,
        "total_seconds": 0.0,
        "train_seconds": 0.0,
        "export_seconds": 0.0,
        "outside_stages_seconds": 0.0,
        "stages": {},
        "model": {"params": disk["params"], "seconds": 0.0},
        "data": {"train": {"rows": args.train_rows}, "test": {"rows": args.test_rows}, "seconds": 0.0},
        "notes": notes,
    }
    if not disk["fits"]:
        record["error"] = (
            f"the disk has {disk['free_gib']} GiB free; the run needs {disk['need_without_base_gib']} GiB even with "
            "the base weights deleted after the merge"
        )
        return _finish(record, args, work, 1)

    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        record["model"] = build_random_model(args.shape, model_dir)
        print(f"[rehearse] built {record['model']}", flush=True)
    began = time.monotonic()
    lengths = {"prompt_tokens": args.prompt_tokens, "completion_tokens": args.completion_tokens}
    record["data"] = write_r1_data(
        shape_tokenizer(args.shape), work / "data", args.train_rows, args.test_rows, **lengths
    )
    record["data"]["seconds"] = round(time.monotonic() - began, 1)
    print(f"[rehearse] data: {record['data']}", flush=True)

    config = rehearsal_config(args, model_dir, record["data"], work)
    if args.grpo_steps:  # refused now, not after the flow has run for minutes
        try:
            grpo_train_config(args, config, None)
        except ConfigError as exc:
            record["error"] = str(exc)
            return _finish(record, args, work, 1)
    run_dir = config.run_dir()
    deleted: list[str] = []

    def housekeeping() -> None:
        if (  # evaluation and fairness read the base beside the export: it goes once they and the merge are done
            disk["delete_base_after_merge"]
            and not deleted
            and (Path(out_dir(run_dir, "merge")) / "merged" / "config.json").exists()
            and (Path(out_dir(run_dir, "fairness")) / "fairness.json").exists()
            and any(Path(out_dir(run_dir, "convert")).glob("*.gguf"))  # a converter reading the base is done
            and not any(Path(out_dir(run_dir, "convert")).glob(".*-merged-view"))
        ):
            for weights in model_dir.glob("*.safetensors"):
                weights.unlink()
                deleted.append(weights.name)
            print(f"[rehearse] deleted the base weights ({len(deleted)} files) after the merge, for disk", flush=True)
            notes.append(
                f"disk: {disk['free_gib']} GiB free < {disk['need_gib']} GiB for every file at once, so the base "
                "weights were deleted once the merge had written the merged model"
            )

    sampler = Sampler(work, on_sample=housekeeping)
    flow_start = time.time()
    ended: dict = {}  # the flow's end, result and error, once it has ended (the deadline may come in the GRPO stage)
    if args.deadline_s:
        watchdog = threading.Timer(
            max(1.0, args.deadline_s - (time.monotonic() - began_all)),
            _deadline,
            (record, args, work, sampler, flow_start, started_at, ended),
            # os._exit skips the flow's settled: the run's temporary F16 in /dev/shm would outlive the process
            {"scratch": (config.export.scratch_dir, run_dir)},
        )
        watchdog.daemon = True
        watchdog.start()
    result, error = run_flow(flow, config, sampler)
    flow_end = time.time()
    ended.update(flow_end=flow_end, result=result, error=error)
    if args.grpo_steps and error is None and getattr(result, "data", None) is not None:
        record["grpo"], error = grpo_stage(args, config, result, work)
    if args.deadline_s:
        watchdog.cancel()  # the flow ended first: its own table, not the deadline's
    samples = sampler.stop()
    _measure(record, samples, flow_start, flow_end, started_at, result, error)
    return _finish(record, args, work, 0 if error is None else 1)


def grpo_train_config(args, config, adapter: str | None):
    """The GRPO stage's train section, validated as the form validates one: the run's, its train.grpo kept (the
    stage's flags where given; the buffer inside the limit), the batch --grpo-micro-batch (one group) x 1. A
    ConfigError naming the flags when a step would split a group."""
    from pydantic import ValidationError

    from r1lib.config import TrainConfig
    from r1lib.rehearsal.grpo import grpo_settings

    asked = config.train.grpo  # the run's train.grpo, its --set included; the stage's flags where given
    generations = asked.num_generations if args.grpo_generations is None else args.grpo_generations
    tokens = asked.max_completion_length if args.grpo_completion_tokens is None else args.grpo_completion_tokens
    grpo = asked.model_dump() | grpo_settings(generations, tokens)
    if asked.overlong_buffer <= tokens:
        grpo["overlong_buffer"] = asked.overlong_buffer
    micro_batch = generations if args.grpo_micro_batch is None else args.grpo_micro_batch
    batch = {"method": "grpo", "micro_batch_size": micro_batch, "gradient_accumulation": 1}
    try:
        return TrainConfig.model_validate(config.train.model_dump() | batch | {"init_adapter": adapter, "grpo": grpo})
    except ValidationError as exc:
        raise ConfigError(
            f"the GRPO stage (--grpo-steps {args.grpo_steps}): --grpo-micro-batch {micro_batch} and "
            f"train.grpo (num_generations {generations}: --grpo-generations or --set) do not fit: "
            f"{exc.errors()[0]['msg']}"
        ) from None


def grpo_stage(args, config, result, work: Path) -> tuple[dict, str | None]:
    """GRPO after the flow, from its SFT adapter (a fresh one after a data-only run: ``--set stop_after=tokenize``),
    on its tokenized training rows (r1lib/rehearsal/grpo.py): seconds and generated tokens per step and peak GPU
    memory, every completion at its token limit. (figures, error)."""
    from r1lib.rehearsal.grpo import measure_grpo
    from r1lib.training.backends import choose_backend

    trained = getattr(result, "trained", None)
    try:
        train = grpo_train_config(args, config, trained.adapter if trained is not None else None)
        figures = measure_grpo(
            result.model_dir, config.model, train, result.data.train.dataset, work / "grpo", args.grpo_steps,
            config.tokenize.max_seq_length, trained.backend if trained is not None else choose_backend(config.train),
        )  # fmt: skip
    except BaseException as exc:  # noqa: BLE001  (as run_flow: the failure is the finding)
        traceback.print_exc()
        return {}, f"grpo: {type(exc).__name__}: {str(exc)[:400]}"
    print(f"[rehearse] grpo: {figures}", flush=True)
    return figures, None


def _measure(record: dict, samples, flow_start, flow_end, started_at, result, error) -> None:
    """The stage table and the run's figures into ``record``."""
    from r1lib.ops.timeline import StageSpan, critical_path
    from r1lib.rehearsal.meter import stage_table, task_runs_since

    stages = stage_table(task_runs_since(started_at), samples, flow_start, flow_end)
    covered = sum(row["seconds"] for row in stages.values())
    record.update(
        completed=error is None,
        total_seconds=round(flow_end - flow_start, 2),
        train_seconds=stages.get("train", {}).get("seconds", 0.0),
        export_seconds=span_seconds(stages, lambda name: group_of(name) == "export"),
        after_training_seconds=round(flow_end - flow_start - stages["train"]["end_s"], 2)
        if "train" in stages
        else None,
        critical_path=critical_path(
            [StageSpan(stage=name, start=row["start_s"], end=row["end_s"]) for name, row in stages.items()]
        ),
        outside_stages_seconds=round(max(0.0, flow_end - flow_start - covered), 2),
        stages=stages,
        peak_disk_gib=round(max(s["disk"] for s in samples) / 2**30, 2),  # everything under the rehearsal's folder
        **collect(result),
    )
    if error:
        record["error"] = error


def span_seconds(stages: dict[str, dict], member) -> float:
    """Wall seconds from the first start to the last end of the stages ``member`` picks (stages that overlap count
    once: the quantize children run at the same time)."""
    rows = [row for name, row in stages.items() if member(name)]
    return round(max(r["end_s"] for r in rows) - min(r["start_s"] for r in rows), 2) if rows else 0.0


def _deadline(
    record: dict, args, work: Path, sampler, flow_start, started_at, ended: dict, scratch: tuple | None = None
) -> None:
    """At ``--deadline-s``: the table of the stages so far (the running one up to now), then exit at once. Where the
    flow had ended and the GRPO stage was running, the flow's own table, and the GRPO stage marked as cut.
    ``scratch``: (``export.scratch_dir``, the run folder): the run's scratch folder (RAM), which the exit would leave
    behind."""
    try:
        samples = list(sampler.samples) or [sampler.sample()]
        if "flow_end" in ended:
            _measure(record, samples, flow_start, ended["flow_end"], started_at, ended["result"], ended["error"])
            record["grpo"] = {"error": f"stopped at --deadline-s {args.deadline_s:g} while the GRPO stage was running"}
        else:
            error = f"stopped at --deadline-s {args.deadline_s:g} while the flow was still running"
            _measure(record, samples, flow_start, time.time(), started_at, None, error)
        # The scratch folder stays: the stage that is still running (a quantize child) reads from it until it dies.
        _finish(record, args, work, 3, keep=True)
    finally:
        if scratch is not None:  # unlinked, a file a child still reads stays readable until the child dies
            from r1lib.export.scratch import remove_run_scratch

            remove_run_scratch(*scratch)
        os._exit(3)


def _finish(record: dict, args, work: Path, code: int, keep: bool = False) -> int:
    from r1lib.rehearsal.report import markdown, write_result

    json_path, md_path = write_result(record, Path(args.out), args.tag)
    print(markdown(record), flush=True)
    print(f"[rehearse] wrote {json_path} and {md_path}", flush=True)
    if not (args.keep or keep):
        shutil.rmtree(work, ignore_errors=True)
    return code
