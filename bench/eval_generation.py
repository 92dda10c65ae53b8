"""Evaluation generation against plain HF generate, at the SAME batch size and max_new_tokens, in one run.

    python bench/eval_generation.py --shape tiny-qwen --batch 4 --max-new-tokens 16 --out bench/results  # CPU
    python bench/eval_generation.py --shape r1-qwen-7b --batch 16 --max-new-tokens 256 --out $OUT       # GPU

A random-weight checkpoint of the shape (r1lib/rehearsal/shapes.py) with a random LoRA adapter (every linear of the
decoder, rank 16, non-zero B) and R1-like prompts of realistic length (r1lib/rehearsal/data.py). Every mode answers
the same ``--batch`` prompts with up to ``--max-new-tokens`` tokens each, greedy, through the pipeline's own
``r1lib.model.generation.generate`` (random weights never end a sentence: every row runs to the limit):

  plain            the 4-bit model with the adapter attached, HF generate, dynamic cache: what users run (the
                   baseline of tasks/evaluate.py: time_plain_generate)
  merged-dynamic   the evaluation's path: 4-bit weights dequantized, the adapter merged, HF generate
  merged-static    the same with ``evaluate.kv_cache: static``: a preallocated cache, the one-token decode step
                   recorded once as a CUDA graph and replayed (r1lib/model/graph_decode.py). Timed twice: the first
                   pass pays the recording, the second is what every later batch of the evaluation gets.
  adapter-static   the recorded step on the 4-bit model with the adapter attached (evaluation's adapter mode, when
                   the dequantized weights do not fit)

Each static mode also reports how many rows wrote exactly the tokens of its dynamic counterpart (plain for
adapter-static, merged-dynamic for merged-static): bf16 ties may part a few rows late in a completion.

Writes eval-generation-<shape>-<date>.json and .md (tokens/s and the speed-up of each mode over ``plain``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_adapter(model_dir: Path, out_dir: Path, seed: int = 0) -> None:
    """A LoRA adapter with non-zero B (an untrained one would change nothing), saved with the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from r1lib.model.loading import load_tokenizer

    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.bfloat16, device_map={"": device}, trust_remote_code=False
    )
    model = get_peft_model(base, LoraConfig(r=16, lora_alpha=16, target_modules=LORA_TARGETS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    model.save_pretrained(out_dir)
    load_tokenizer(str(model_dir), trust_remote_code=False).save_pretrained(out_dir)
    del model, base
    if device == "cuda":
        torch.cuda.empty_cache()


def timed(model, tokenizer, prompts, cfg, batch: int, reference: list | None = None) -> dict:
    from r1lib.model.generation import generate

    texts, stats = generate(model, tokenizer, prompts, cfg, batch, cfg.max_new_tokens)
    row = {
        "new_tokens": stats.new_tokens,
        "seconds": stats.seconds,
        "tokens_per_s": stats.tokens_per_second,
        "truncated": stats.truncated,
        "texts": texts,
    }
    if reference is not None:
        row["same_tokens_rows"] = f"{sum(a == b for a, b in zip(texts, reference))}/{len(texts)}"
    return row


def measure(model_dir: Path, adapter_dir: Path, prompts: list[str], batch: int, max_new_tokens: int) -> dict:
    from peft import PeftModel

    from r1lib.config import EvalConfig, ModelConfig
    from r1lib.model.generation import generate, time_plain_generate
    from r1lib.model.gpu_memory import release
    from r1lib.model.loading import dequantize_4bit, load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir), trust_remote_code=False)
    cfg = EvalConfig(
        batch_size=batch, max_new_tokens=max_new_tokens, baseline_rows=batch, baseline_tokens=max_new_tokens
    )
    model = load_causal_lm(str(model_dir), ModelConfig(), four_bit=True)
    modes = {"plain": time_plain_generate(model, str(adapter_dir), tokenizer, prompts, cfg, batch)}
    modes["plain"]["seconds"] = None  # time_plain_generate reports tokens/s only
    static = cfg.model_copy(update={"kv_cache": "static"})
    dynamic = cfg.model_copy(update={"kv_cache": "dynamic"})
    tuned = PeftModel.from_pretrained(model, str(adapter_dir))
    tuned.eval()
    plain_texts = timed(tuned, tokenizer, prompts, dynamic, batch)["texts"]  # the reference of adapter-static
    modes["adapter-static"] = timed(tuned, tokenizer, prompts, static, batch, plain_texts)
    model = tuned.unload()
    model = PeftModel.from_pretrained(dequantize_4bit(model), str(adapter_dir)).merge_and_unload()
    model.eval()
    generate(model, tokenizer, prompts[:1], dynamic, 1, 2)  # kernels initialised outside the timing, as the baseline's
    modes["merged-dynamic"] = timed(model, tokenizer, prompts, dynamic, batch)
    reference = modes["merged-dynamic"]["texts"]
    modes["merged-static (first pass, with the recording)"] = timed(model, tokenizer, prompts, static, batch, reference)
    modes["merged-static"] = timed(model, tokenizer, prompts, static, batch, reference)
    del model, tuned
    release()
    for row in modes.values():
        row.pop("texts", None)
    plain = modes["plain"]["tokens_per_s"]
    for row in modes.values():
        row["speedup_over_plain"] = round(row["tokens_per_s"] / max(plain, 1e-9), 2)
    return modes


def markdown(record: dict) -> str:
    lines = [
        f"# Evaluation generation: {record['shape']}, {record['date']}",
        "",
        f"`{record['command']}` on {record['device']} ({record['cpus']} CPUs, load {record['load']}). Random weights "
        f"of the shape ({record['params'] / 1e9:.2f}B parameters), a random rank-16 LoRA adapter; {record['batch']} "
        f"R1-like prompts ({record['prompt_tokens']} tokens) at once, up to {record['max_new_tokens']} new tokens "
        "each, greedy, in every mode.",
        "",
        "| mode | new tokens | seconds | tokens/s | speed-up over plain | rows with the dynamic path's tokens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in record["modes"].items():
        seconds = "–" if row["seconds"] is None else f"{row['seconds']:.2f}"
        lines.append(
            f"| {name} | {row['new_tokens']} | {seconds} | {row['tokens_per_s']} | {row['speedup_over_plain']}x "
            f"| {row.get('same_tokens_rows', '–')} |"
        )
    return "\n".join([*lines, ""])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="tiny-qwen")
    parser.add_argument("--batch", type=int, default=4, help="the pipeline's evaluate.batch_size")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="the pipeline's evaluate.max_new_tokens")
    parser.add_argument("--prompt-tokens", default="50,300", help="prompt lengths, uniform in LO,HI tokens")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    parser.add_argument("--work", default="/tmp/r1-eval-generation")
    args = parser.parse_args(argv)

    from r1lib.io import write_json, write_text
    from r1lib.rehearsal.data import r1_rows
    from r1lib.rehearsal.meter import cpu_count
    from r1lib.rehearsal.run import device_name
    from r1lib.rehearsal.shapes import build_random_model, shape_tokenizer

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    built = build_random_model(args.shape, work / "model")
    print(f"[eval_generation] built {built}", flush=True)
    random_adapter(work / "model", work / "adapter")
    tokenizer = shape_tokenizer(args.shape)
    lo, hi = (int(x) for x in args.prompt_tokens.split(","))
    rows = r1_rows(tokenizer, args.batch, seed=1, prompt_tokens=(lo, hi), completion_tokens=(40, 80))
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": r["instruction"]}], add_generation_prompt=True,
                                      tokenize=False)
        for r in rows
    ]  # fmt: skip
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    modes = measure(work / "model", work / "adapter", prompts, args.batch, args.max_new_tokens)
    started = datetime.now(UTC)
    record = {
        "shape": args.shape,
        "date": started.strftime("%Y-%m-%d"),
        "command": "python bench/eval_generation.py " + " ".join(argv),
        "device": device_name(),
        "cpus": cpu_count(),
        "load": round(os.getloadavg()[0], 2),
        "params": built["params"],
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
        "prompt_tokens": f"{min(lengths)}-{max(lengths)}",
        "modes": modes,
        "best": max((m for m in modes if "first pass" not in m), key=lambda m: modes[m]["tokens_per_s"]),
        "at": time.time(),
    }
    name = f"eval-generation-{args.shape}-{record['date']}"
    write_json(Path(args.out) / f"{name}.json", record)
    write_text(Path(args.out) / f"{name}.md", markdown(record))
    print(markdown(record), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
