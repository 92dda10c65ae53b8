"""GRPO step throughput: the pipeline's GRPO (train.method=grpo through the train stage's fit loop: Unsloth's patched
GRPOTrainer on CUDA, transformers + peft elsewhere) against TRL's own GRPOTrainer with transformers + bitsandbytes +
peft, on the same random-weight model, prompts and settings, each in a child process of its own.

    python bench/grpo_throughput.py --shape r1-qwen-7b --gpu-cap-gib 24          # GPU: 4-bit + LoRA, 8 x 1024 tokens
    python bench/grpo_throughput.py --shape tiny-qwen --steps 2 --num-generations 4 \\
        --max-completion-length 16 --prompt-tokens 20,40 --rows 8                # the same path on a CPU

Random weights never end a sentence, so every completion runs to ``--max-completion-length``: both sides generate
exactly the same number of tokens per step. ``--sides pipeline`` then ``--sides trl`` measures them in two calls
(on one machine: the second reuses ``--work``'s model and reports both). Per side: seconds per optimizer step (median
after the first), generated tokens per second, peak GPU memory (torch's, in that process). Writes
bench/results/grpo_throughput-<shape>[-cap<N>]-<date>.json and .md, and each child's raw log beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

SIDES = ("pipeline", "trl")


def parse_args(argv: list[str]) -> argparse.Namespace:
    def pair(text: str) -> tuple[int, int]:
        low, high = (int(x) for x in text.split(","))
        return low, high

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="r1-qwen-7b")
    parser.add_argument("--gpu-cap-gib", type=float, default=None, help="train.max_gpu_memory_gib for both sides")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--num-generations", type=int, default=8)
    parser.add_argument("--max-completion-length", type=int, default=1024)
    parser.add_argument("--micro-batch", type=int, default=8, help="completions per micro-batch")
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--rows", type=int, default=32, help="prompts in the data set")
    parser.add_argument("--prompt-tokens", type=pair, default=(100, 300))
    parser.add_argument(
        "--rollouts", default="auto", choices=("auto", "recorded", "hf"), help="train.grpo.rollouts of the pipeline"
    )
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=SIDES)
    parser.add_argument("--work", default="/tmp/r1-grpo-throughput")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--tag", default="")
    parser.add_argument("--fresh", action="store_true", help="start from an empty --work (else reuse its model)")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings(args) -> dict:
    """The train section both sides use: the shape's preset, method grpo, this batch and these generation limits."""
    from r1lib.presets import preset
    from r1lib.rehearsal.grpo import grpo_settings
    from r1lib.rehearsal.shapes import SHAPES

    config = preset(SHAPES[args.shape]["preset"])
    train = config.train.model_dump()
    train.update(
        method="grpo",
        micro_batch_size=args.micro_batch,
        gradient_accumulation=args.accumulation,
        max_gpu_memory_gib=args.gpu_cap_gib,
        grpo={**grpo_settings(args.num_generations, args.max_completion_length), "rollouts": args.rollouts},
        gradient_checkpointing=True,
    )
    return {"train": train, "model": config.model.model_dump(), "max_seq_length": config.tokenize.max_seq_length}


def prepare(args, work: Path) -> dict:
    """The random-weight model, the R1-like rows tokenized as the tokenize stage does (the pipeline's input) and the
    same rows as GRPO prompts (TRL's input)."""
    from datasets import Dataset

    from r1lib.config import TokenizeConfig
    from r1lib.data.records import make_record
    from r1lib.data.row_formats import normalize
    from r1lib.rehearsal.data import r1_rows
    from r1lib.rehearsal.shapes import build_random_model, shape_tokenizer
    from r1lib.training.methods.grpo import grpo_rows
    from tasks.tokenize import tokenize_records

    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        print(f"[grpo-throughput] built {build_random_model(args.shape, model_dir)}", flush=True)
    tokenizer = shape_tokenizer(args.shape)
    rows = r1_rows(tokenizer, args.rows, seed=0, prompt_tokens=args.prompt_tokens, completion_tokens=(40, 80))
    records = [make_record(normalize(r), "r1-train.jsonl", i) for i, r in enumerate(rows, 1)]
    tokenized, _, _ = tokenize_records(tokenizer, records, TokenizeConfig(max_seq_length=4096))
    Dataset.from_list(tokenized).save_to_disk(str(work / "tokenized"))
    prompts, refused = grpo_rows(tokenized, tokenizer, 100_000)
    assert not refused, refused[:3]
    Dataset.from_list(prompts).save_to_disk(str(work / "prompts"))
    return {"model_dir": str(model_dir), "tokenized": str(work / "tokenized"), "prompts": str(work / "prompts")}


def run_pipeline(spec: dict, work: Path) -> dict:
    """The pipeline's GRPO: the train stage's fit loop, backend auto (Unsloth on CUDA)."""
    from r1lib.config import ModelConfig, TrainConfig
    from r1lib.model.gpu_memory import apply_cap
    from r1lib.rehearsal.grpo import measure_grpo
    from r1lib.training.backends import choose_backend

    cfg = TrainConfig(**spec["train"])
    apply_cap(cfg.max_gpu_memory_gib)
    return measure_grpo(
        spec["model_dir"], ModelConfig(**spec["model"]), cfg, spec["tokenized"], work / "pipeline-run",
        cfg.max_steps, spec["max_seq_length"], choose_backend(cfg),
    )  # fmt: skip


def run_trl(spec: dict, work: Path) -> dict:
    """TRL's own GRPOTrainer as its documentation sets it up: transformers with bitsandbytes NF4, peft's LoRA
    config handed to the trainer, the same rewards, batch and generation limits; no Unsloth imported."""
    import statistics

    import torch
    from datasets import load_from_disk
    from peft import LoraConfig, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import GRPOConfig, GRPOTrainer

    from r1lib.compat import install_torch_chunked_logprob
    from r1lib.config import TrainConfig
    from r1lib.model.gpu_memory import GIB, apply_cap
    from r1lib.rehearsal.grpo import step_recorder
    from r1lib.training.rewards import trl_rewards

    cfg = TrainConfig(**spec["train"])
    apply_cap(cfg.max_gpu_memory_gib)
    cuda = torch.cuda.is_available()
    if not cuda:
        install_torch_chunked_logprob()  # TRL's chunked log-probabilities are a Triton kernel: none on a CPU
    dtype = torch.bfloat16 if cuda else torch.float32
    quant = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"],
        quantization_config=quant,
        dtype=dtype,
        device_map={"": 0} if cuda else None,
        trust_remote_code=False,
    )
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"], trust_remote_code=False)
    tokenizer.padding_side = "left"
    functions, weights = trl_rewards(
        cfg.grpo.rewards.model_dump(), cfg.grpo.max_completion_length, cfg.grpo.overlong_buffer
    )
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM")  # fmt: skip
    args = GRPOConfig(
        output_dir=str(work / "trl-run"), max_steps=cfg.max_steps, logging_steps=1, save_strategy="no",
        per_device_train_batch_size=cfg.micro_batch_size, gradient_accumulation_steps=cfg.gradient_accumulation,
        learning_rate=cfg.learning_rate, optim="adamw_bnb_8bit" if cuda else "adamw_torch", bf16=cuda,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        num_generations=cfg.grpo.num_generations, max_completion_length=cfg.grpo.max_completion_length,
        temperature=cfg.grpo.temperature, top_p=cfg.grpo.top_p, beta=cfg.grpo.beta, loss_type=cfg.grpo.loss_type,
        reward_weights=weights, use_vllm=False, report_to="none", use_cpu=not cuda, seed=cfg.seed,
    )  # fmt: skip
    recorder = step_recorder()
    trainer = GRPOTrainer(
        model=model, reward_funcs=functions, args=args, train_dataset=load_from_disk(spec["prompts"]),
        processing_class=tokenizer, peft_config=lora, callbacks=[recorder],
    )  # fmt: skip
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    trainer.train()
    completions = cfg.micro_batch_size * cfg.gradient_accumulation
    generated = [log["completions/mean_length"] * completions for log in recorder.logs]
    steady = recorder.seconds[1:] or recorder.seconds
    return {
        "backend": "trl GRPOTrainer (transformers + bitsandbytes + peft)",
        "steps": trainer.state.global_step,
        "completions_per_step": completions,
        "seconds": round(time.monotonic() - started, 2),
        "step_seconds": [round(s, 3) for s in recorder.seconds],
        "seconds_per_step": round(statistics.median(steady), 3),
        "generated_tokens": int(sum(generated)),
        "generated_tokens_per_s": round(sum(generated[1:] or generated) / max(sum(steady), 1e-9), 1),
        "mean_completion_length": round(statistics.mean(g / completions for g in generated), 1),
        "peak_gpu_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2) if cuda else None,
    }


def child(args) -> int:
    """One side, in this process: its figures to <work>/<side>.json."""
    from r1lib.process import apply_defaults

    apply_defaults()
    work = Path(args.work)
    spec = json.loads((work / "spec.json").read_text())
    figures = (run_pipeline if args.child == "pipeline" else run_trl)(spec, work)
    (work / f"{args.child}.json").write_text(json.dumps(figures, indent=1))
    print(f"[grpo-throughput] {args.child}: {json.dumps(figures)}", flush=True)
    return 0


def device() -> str:
    import torch

    return f"{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "CPU"


def table(result: dict) -> str:
    lines = [
        "| side | backend | s/step | generated tokens/s | mean completion | peak GPU reserved GiB |",
        "|---|---|---|---|---|---|",
    ]
    for side in result["sides"]:
        r = result[side]
        if "error" in r:
            lines.append(f"| {side} | failed: {r['error'][:120]} | | | | |")
            continue
        lines.append(
            f"| {side} | {r['backend']} | {r['seconds_per_step']} | {r['generated_tokens_per_s']} | "
            f"{r['mean_completion_length']} | {r['peak_gpu_reserved_gib']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import shutil

    args = parse_args(argv)
    if args.child:
        return child(args)
    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)  # a later call on the same machine reuses the model and the other side
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"grpo_throughput-{args.shape}{f'-cap{args.gpu_cap_gib:g}' if args.gpu_cap_gib else ''}-{date.today()}"
    stem += f"-{args.tag}" if args.tag else ""
    spec = {**settings(args), **prepare(args, work)}
    spec["train"]["max_steps"] = args.steps
    (work / "spec.json").write_text(json.dumps(spec))
    result = {
        "date": str(date.today()),
        "shape": args.shape,
        "device": device(),
        "gpu_cap_gib": args.gpu_cap_gib,
        "command": "python bench/grpo_throughput.py " + " ".join(argv),
        "sides": [s for s in SIDES if s in args.sides or (work / f"{s}.json").exists()],
        "settings": {k: spec["train"][k] for k in ("micro_batch_size", "gradient_accumulation", "grpo")},
    }
    for side in SIDES:
        if side not in args.sides:  # measured by an earlier call into this --work (one side per call on a GPU)
            if (work / f"{side}.json").exists():
                result[side] = {**json.loads((work / f"{side}.json").read_text()), "earlier_call": True}
            continue
        (work / f"{side}.json").unlink(missing_ok=True)
        log_path = out / f"{stem}-{side}.log"
        with open(log_path, "w") as log:
            code = subprocess.call([sys.executable, __file__, *argv, "--child", side], stdout=log, stderr=log)
        figures = work / f"{side}.json"
        result[side] = json.loads(figures.read_text()) if code == 0 and figures.exists() else {
            "error": f"exit {code}: " + log_path.read_text()[-400:].replace("\n", " ")}  # fmt: skip
    ours, theirs = result.get("pipeline", {}), result.get("trl", {})
    if ours.get("seconds_per_step") and theirs.get("seconds_per_step"):
        result["speedup_step"] = round(theirs["seconds_per_step"] / ours["seconds_per_step"], 2)
        result["tokens_per_s_ratio"] = round(ours["generated_tokens_per_s"] / theirs["generated_tokens_per_s"], 2)
        if ours.get("peak_gpu_reserved_gib") and theirs.get("peak_gpu_reserved_gib"):
            result["memory_ratio"] = round(ours["peak_gpu_reserved_gib"] / theirs["peak_gpu_reserved_gib"], 2)
    text = table(result)
    summary = (
        f"pipeline vs TRL: {result.get('speedup_step')}x step speed, {result.get('tokens_per_s_ratio')}x generated "
        f"tokens/s, memory ratio {result.get('memory_ratio')} (goal: >= 2x at <= 1.0)"
    )
    print(text + "\n" + summary, flush=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}.md").write_text(
        f"# GRPO throughput, {args.shape} on {result['device']} ({result['date']})\n\n`{result['command']}`\n\n"
        f"{args.steps} optimizer steps per side, {args.micro_batch * args.accumulation} completions per step "
        f"({args.num_generations} per prompt), every completion {args.max_completion_length} tokens (random weights "
        f"never stop). Raw logs: `{stem}-<side>.log`.\n\n{text}\n\n{summary}\n"
    )
    return 0 if all("error" not in result[s] for s in result["sides"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
