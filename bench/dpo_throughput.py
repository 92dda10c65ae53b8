"""DPO training throughput and peak memory: the pipeline's DPO against TRL's plain ``DPOTrainer``.

    python bench/dpo_throughput.py --shape llama8b --build-only                        # GPU: the model, once
    python bench/dpo_throughput.py --shape llama8b --out bench/results --tag h100      # GPU: both sides
    python bench/dpo_throughput.py --shape tiny --steps 2 --warmup 1 --seq 64          # CPU: the same path, a toy shape

Both sides train the same preference pairs (random token ids: every side ``--seq`` tokens, the first
``--prompt-share`` of them the prompt, the rest the scored completion), with the same micro-batch of pairs, the same
LoRA (the preset's rank, alpha and target modules), optimizer, learning rate, precision and gradient checkpointing on:

  pipeline  ``r1lib.training.backends.build_trainer`` with ``train.method = dpo``, as the train stage builds it: on
            CUDA the Unsloth backend (``FastLanguageModel`` on the 4-bit base, its offloaded checkpointing), elsewhere
            the HF backend; the reference policy is the base with the adapter disabled.
  plain     what a user of TRL writes: transformers' ``from_pretrained`` with a bitsandbytes NF4
            ``BitsAndBytesConfig`` (double quantization), TRL's ``DPOTrainer`` with a peft ``LoraConfig`` and its own
            collator, transformers' (non-reentrant) gradient checkpointing. Its only change: the pairs are passed
            through pre-tokenized (r1lib.compat.pretokenized_preference_trainer), which is not timed.

The models are random-weight models of the real shapes (r1lib/model/shapes.py: ``llama8b`` = DeepSeek-R1-Distill-
Llama-8B; ``tiny`` = the same layout at toy size, for the CPU), built from their configs and saved once. Each side
runs in its own child process (importing Unsloth patches transformers, peft and TRL for the whole process; and peak
memory is then the side's own). Tokens/s = tokens of both sides of every pair trained between the end of the warm-up
steps and the last timed step, over that wall time; peak memory = ``torch.cuda.max_memory_reserved`` (and allocated)
since a reset before the model load; on the CPU, the child's peak resident memory instead. The parent prints the
table and the ratios and writes ``dpo_throughput[_TAG].json`` (with each child's log lines) and ``.md`` (a dated
table) under ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from r1lib.model.shapes import R1_BOS, config_fields  # noqa: E402  (after the sys.path line above)

SHAPES = {
    "llama8b": dict(config_fields("r1-llama-8b"), bos_token_id=R1_BOS["llama"], preset="r1-llama-8b"),
    "tiny": dict(
        config_fields(
            "r1-llama-8b",
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=128256,
        ),  # fmt: skip
        bos_token_id=R1_BOS["llama"],
        preset="r1-llama-8b",
    ),
}
TARGETS = {"pipeline_over_plain_tokens_per_s": ">= 1.5", "pipeline_over_plain_peak_reserved": "<= 0.5"}


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_model_dir(shape_name: str, root: Path) -> Path:
    """A random-weight bf16 model of the shape, with a small word-level tokenizer carrying its special-token ids."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    shape = {k: v for k, v in SHAPES[shape_name].items() if k != "preset"}
    path = root / shape_name
    if (path / "config.json").exists():
        return path
    started = time.monotonic()
    with torch.device("cuda" if cuda() else "cpu"):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(**shape), dtype=torch.bfloat16, trust_remote_code=False
        )
    model.save_pretrained(path, safe_serialization=True)
    vocab = {f"w{i}": i for i in range(1000)}
    vocab.update({"<unk>": 1000, "<pad>": 1001, "<bos>": shape["bos_token_id"], "<eos>": shape["eos_token_id"]})
    words = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(
        tokenizer_object=words, unk_token="<unk>", pad_token="<pad>", bos_token="<bos>", eos_token="<eos>"
    ).save_pretrained(path)
    del model
    print(f"[bench] built {shape_name} in {time.monotonic() - started:.0f} s", flush=True)
    return path


def pair_rows(n: int, seq: int, prompt_share: float, vocab: int, bos: int, seed: int) -> list[dict]:
    """``n`` preference pairs of random ids in the pipeline's pair columns: every side exactly ``seq`` tokens."""
    import random

    rng = random.Random(seed)
    prompt = max(2, int(seq * prompt_share))
    draw = lambda k: [rng.randrange(2, min(vocab, 100_000)) for _ in range(k)]  # noqa: E731
    rows = []
    for _ in range(n):
        chosen, rejected = draw(seq - prompt), draw(seq - prompt)
        rows.append({"prompt_ids": [bos, *draw(prompt - 1)], "chosen_ids": chosen, "chosen_labels": chosen,
                     "rejected_ids": rejected, "rejected_labels": rejected})  # fmt: skip
    return rows


def train_config(args):
    """The preset's train section as the DPO run trains it (checkpointing on, no evaluation, no checkpoints)."""
    from r1lib.presets import preset

    base = preset(SHAPES[args.shape]["preset"]).train
    return base.model_copy(
        update=dict(
            method="dpo",
            backend="auto",
            max_steps=args.warmup + args.steps,
            micro_batch_size=args.batch,
            gradient_accumulation=1,
            gradient_checkpointing=True,
            packing=False,
            save_steps=100_000,
            logging_steps=1,
            eval_steps=0,
            early_stopping_patience=0,
        )
    )


def pipeline_trainer(args, rows, model_dir: Path, callbacks):
    from r1lib.config import ModelConfig
    from r1lib.training.backends import build_trainer, choose_backend
    from r1lib.training.methods import TrainerSpec

    cfg = train_config(args)
    backend = choose_backend(cfg)
    trainer, _ = build_trainer(
        TrainerSpec(
            backend=backend,
            train_rows=rows,
            model_dir=str(model_dir),
            model_cfg=ModelConfig(name_or_path=str(model_dir), load_in_4bit=True),
            cfg=cfg.model_copy(update={"backend": backend}),
            max_seq_length=args.seq,
            output_dir=Path(args.work) / "ckpt-pipeline",
            micro_batch=args.batch,
            accumulation=1,
            callbacks=callbacks,
        )
    )
    return trainer, backend


def plain_trainer(args, rows, model_dir: Path, callbacks):
    """TRL's DPOTrainer as its documentation's QLoRA recipe runs it, with our train section's shared settings."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOConfig, DPOTrainer

    from r1lib.compat import install_torch_chunked_logprob, pretokenized_preference_trainer
    from r1lib.training.methods.base import optimizer_name

    cfg = train_config(args)
    on_gpu = cuda()
    if not on_gpu:  # TRL's fused LM head is a Triton kernel; on a CPU only our plain-torch stand-in runs it
        install_torch_chunked_logprob()
    dtype = torch.bfloat16 if on_gpu else torch.float32
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
    )
    model = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        quantization_config=quantization,
        dtype=dtype,
        device_map={"": 0} if on_gpu else None,
        trust_remote_code=False,
    )
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules, bias="none", task_type="CAUSAL_LM",
    )  # fmt: skip
    config = DPOConfig(
        output_dir=str(Path(args.work) / "ckpt-plain"),
        per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=1,
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        optim=optimizer_name(cfg, on_gpu),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=on_gpu,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        beta=cfg.dpo.beta,
        max_length=args.seq,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not on_gpu,
        seed=cfg.seed,
        remove_unused_columns=False,
    )
    trainer = pretokenized_preference_trainer(DPOTrainer)(
        model=model,
        args=config,
        train_dataset=rows,
        processing_class=AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False),
        peft_config=lora,
        callbacks=callbacks,
    )
    return trainer, "transformers + bitsandbytes NF4 + peft"


def peak_rss_gib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # KiB on Linux


def measure(args) -> dict:
    """One side, in this (child) process: build, train warm-up + timed steps, report."""
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    model_dir = Path(args.work) / "models" / args.shape
    shape = SHAPES[args.shape]
    steps_total = args.warmup + args.steps
    rows = Dataset.from_list(
        pair_rows(args.batch * steps_total, args.seq, args.prompt_share, shape["vocab_size"], shape["bos_token_id"], 1)
    )
    marks: dict[int, float] = {}

    class Timer(TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            if cuda():
                torch.cuda.synchronize()
            marks[state.global_step] = time.perf_counter()
            # A side stopped by --timeout-s still leaves its steps' times and its peak memory for the table.
            progress(args, state.global_step, marks[state.global_step])

    if cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    build = pipeline_trainer if args.child == "pipeline" else plain_trainer
    trainer, backend = build(args, rows, model_dir, [Timer()])
    load_s = time.monotonic() - started
    trainer.train()
    seconds = marks[steps_total] - marks[args.warmup]
    tokens = args.steps * args.batch * 2 * args.seq  # every side of every pair is exactly seq tokens, none padded
    history = trainer.state.log_history
    result = dict(
        side=args.child,
        backend=backend,
        trainer=f"{type(trainer).__module__}.{type(trainer).__name__}",
        shape=args.shape,
        seq=args.seq,
        micro_batch_pairs=args.batch,
        warmup_steps=args.warmup,
        timed_steps=args.steps,
        model_load_s=round(load_s, 1),
        timed_seconds=round(seconds, 3),
        tokens=tokens,
        tokens_per_s=round(tokens / seconds, 1),
        losses=[round(h["loss"], 4) for h in history if "loss" in h],
        reward_margins=[round(h["rewards/margins"], 4) for h in history if "rewards/margins" in h],
    )
    result.update(device=torch.cuda.get_device_name() if cuda() else "cpu", **memory_now())
    result["peak_rss_gib"] = peak_rss_gib()
    return result


def memory_now() -> dict:
    """Peak GPU memory since the reset before the model load (None on a CPU)."""
    import torch

    if not cuda():
        return dict(peak_reserved_gib=None, peak_allocated_gib=None)
    return dict(
        peak_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 2),
        peak_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
    )


def progress(args, step: int, at: float) -> None:
    """One finished optimizer step of a side, appended to the results file as it happens."""
    line = dict(side=args.child, progress=True, step=step, at=at, **memory_now(), peak_rss_gib=peak_rss_gib())
    with open(args.results, "a") as handle:
        handle.write(json.dumps(line) + "\n")


def result_lines(path: Path) -> list[dict]:
    """The results file's lines (none when absent), less any cut short: the half line a child killed by the time
    limit mid-write leaves."""
    parsed = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return parsed


def stopped(side: str, lines: list[dict], args) -> dict:
    """What a side stopped by the time limit measured: its steps, the timed ones' tokens/s (over those that finished
    after the warm-up) and its peak memory so far."""
    steps = {line["step"]: line for line in lines if line["side"] == side and line.get("progress")}
    result = dict(side=side, error=f"stopped after {args.timeout_s:.0f} s at step {max(steps, default=0)}")
    if not steps:
        return result
    last = steps[max(steps)]
    result.update({k: last[k] for k in ("peak_reserved_gib", "peak_allocated_gib", "peak_rss_gib")})
    result["step_seconds"] = [round(steps[k]["at"] - steps[k - 1]["at"], 3) for k in sorted(steps) if k - 1 in steps]
    timed = max(steps) - args.warmup
    if timed > 0 and args.warmup in steps:
        seconds = last["at"] - steps[args.warmup]["at"]
        result.update(partial_timed_steps=timed, timed_seconds=round(seconds, 3),
                      tokens_per_s=round(timed * args.batch * 2 * args.seq / seconds, 1))  # fmt: skip
    return result


def child(args) -> None:
    if args.child == "pipeline" and cuda():
        import unsloth  # noqa: F401  (before transformers / trl / peft, as the train stage imports it)
    try:
        line = measure(args)
    except Exception as exc:  # noqa: BLE001  (reported in the table; the other side still runs)
        import traceback

        traceback.print_exc()
        line = dict(side=args.child, error=f"{type(exc).__name__}: {str(exc)[:500]}")
    with open(args.results, "a") as handle:
        handle.write(json.dumps(line) + "\n")
    print(f"[bench] {json.dumps(line)}", flush=True)


def ratios(by_side: dict) -> dict:
    ours, plain = by_side.get("pipeline", {}), by_side.get("plain", {})
    out = {}
    if "tokens_per_s" in ours and "tokens_per_s" in plain:
        out["pipeline_over_plain_tokens_per_s"] = round(ours["tokens_per_s"] / plain["tokens_per_s"], 3)
        for key in ("peak_reserved_gib", "peak_allocated_gib", "peak_rss_gib"):
            if ours.get(key) and plain.get(key):
                out[f"pipeline_over_plain_{key.removesuffix('_gib')}"] = round(ours[key] / plain[key], 3)
    return out


def table(summary: dict) -> str:
    """The run as a dated markdown table."""
    head = (
        f"# DPO throughput: the pipeline's DPO vs TRL's plain DPOTrainer\n\n"
        f"{summary['date']}, {summary['device']}, shape `{summary['shape']}`, seq {summary['seq']} per side, "
        f"{summary['micro_batch_pairs']} pairs per micro-batch, {summary['warmup_steps']} warm-up + "
        f"{summary['timed_steps']} timed steps, gradient checkpointing on; torch {summary['torch']}, "
        f"transformers {summary['transformers']}, trl {summary['trl']}. Command: `{summary['command']}`\n\n"
    )
    lines = [
        "| side | backend | tokens/s | timed s | peak reserved GiB | peak allocated GiB | peak RSS GiB | losses |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["results"]:
        if "error" in r:
            rate = f"{r['tokens_per_s']:,.0f} ({r['partial_timed_steps']} timed steps)" if "tokens_per_s" in r else ""
            lines.append(
                f"| {r['side']} | failed: {r['error'][:200]} | {rate} | {r.get('timed_seconds', '')} | "
                f"{r.get('peak_reserved_gib', '')} | {r.get('peak_allocated_gib', '')} | {r.get('peak_rss_gib', '')} | "
                f"step s: {r.get('step_seconds', '')} |"
            )
            continue
        lines.append(
            f"| {r['side']} | {r['backend']} | {r['tokens_per_s']:,.0f} | {r['timed_seconds']} | "
            f"{r['peak_reserved_gib']} | {r['peak_allocated_gib']} | {r['peak_rss_gib']} | {r['losses']} |"
        )
    lines += ["", "| ratio | value | target |", "|---|---|---|"]
    lines += [f"| {k} | {v} | {TARGETS.get(k, '')} |" for k, v in summary["ratios"].items()]
    stopped_sides = [r["side"] for r in summary["results"] if "error" in r and "tokens_per_s" in r]
    if stopped_sides and summary["ratios"]:
        lines += ["", f"Partial: {', '.join(stopped_sides)} stopped by the time limit; its tokens/s covers the timed "
                  "steps that finished and its peak memory those steps only."]  # fmt: skip
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama8b")
    parser.add_argument("--seq", type=int, default=2048, help="tokens of each side (prompt + completion)")
    parser.add_argument("--prompt-share", type=float, default=0.25, help="share of each side that is the prompt")
    parser.add_argument("--batch", type=int, default=2, help="preference pairs per micro-batch (2x sequences)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--work", default="/tmp/bench-dpo")
    parser.add_argument("--tag", default="")
    parser.add_argument("--timeout-s", type=float, default=270, help="per side")
    parser.add_argument("--build-only", action="store_true", help="only build and save the random-weight model")
    parser.add_argument("--child", choices=["pipeline", "plain"])
    parser.add_argument("--results")
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    import torch
    import transformers
    import trl

    started = time.monotonic()
    work, out = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    build_model_dir(args.shape, work / "models")
    if args.build_only:
        return None
    stem = f"dpo_throughput{'_' + args.tag if args.tag else ''}"
    results_path = work / f"{stem}.jsonl"
    results_path.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    passed = [a for a in (argv if argv is not None else sys.argv[1:])]
    for side in ("plain", "pipeline"):  # the baseline never shares a process with Unsloth
        command = [sys.executable, __file__, *passed, "--child", side, "--results", str(results_path)]
        try:
            subprocess.run(command, env=env, cwd=ROOT, timeout=args.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            lines = result_lines(results_path)
            # a side that wrote its result and overran only while exiting keeps its result
            if not any(line["side"] == side and not line.get("progress") for line in lines):
                cut = not results_path.read_text().endswith("\n") if results_path.exists() else False
                with open(results_path, "a") as handle:
                    handle.write("\n" * cut + json.dumps(stopped(side, lines, args)) + "\n")
    lines = result_lines(results_path)
    results = [line for line in lines if not line.get("progress")]
    by_side = {r["side"]: r for r in results}
    summary = dict(
        date=datetime.date.today().isoformat(),
        command="python bench/dpo_throughput.py " + " ".join(passed),
        device=next((r["device"] for r in results if "device" in r), "unknown"),
        torch=torch.__version__,
        transformers=transformers.__version__,
        trl=trl.__version__,
        shape=args.shape,
        model=SHAPES[args.shape],
        seq=args.seq,
        prompt_share=args.prompt_share,
        micro_batch_pairs=args.batch,
        warmup_steps=args.warmup,
        timed_steps=args.steps,
        ratios=ratios(by_side),
        targets=TARGETS,
        results=results,
        wall_s=round(time.monotonic() - started, 1),
    )
    from r1lib.io import atomic_path

    for suffix, text in ((".json", json.dumps(summary, indent=2) + "\n"), (".md", table(summary))):
        with atomic_path(out / f"{stem}{suffix}") as tmp:
            Path(tmp).write_text(text)
    print(table(summary), flush=True)
    print(f"[bench] wrote {out / stem}.json and .md", flush=True)
    return summary


if __name__ == "__main__":
    main()
