"""Stage 8, smoke test: every GGUF loads in a fresh llama-cpp-python process and answers in the R1 format.

Each GGUF runs in its own child process (``python -m tasks.smoke``), so a crash inside llama.cpp fails the check
instead of the worker. Per prompt the child checks exactly one BOS at the start of the prompt tokens, generates
greedily, and the parent fails loudly unless the output has a closed ``<think>`` block and a non-empty answer. It
records load time and generation tokens/s. Parity: the F16 GGUF's greedy tokens must equal the HF merged model's
for the same prompt.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.chat_template import extract_answer
from tasks.config import SmokeConfig
from tasks.errors import ExportCheckError
from tasks.export import GGUFFile
from tasks.io import write_json
from tasks.orchestration import stage_options


class SmokeResult(BaseModel):
    gguf: str
    type: str
    load_seconds: float
    tokens_per_second: float
    bos_count: int
    outputs: list[str]
    answers: list[str | None]
    token_ids: list[list[int]]


class SmokeReport(BaseModel):
    results: list[SmokeResult]
    parity_tokens: int
    parity_matching: int
    hf_tokens: list[int]


# --- the child process --------------------------------------------------------------------------------------------


def run_gguf(path: str, prompts: list[str], max_tokens: int, n_ctx: int) -> dict:
    """Load one GGUF and answer each (already templated) prompt greedily. Runs inside the child process."""
    from llama_cpp import Llama

    started = time.monotonic()
    llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=2, seed=0, verbose=False)
    load_seconds = time.monotonic() - started
    outputs, token_ids, generated, gen_seconds, bos_counts = [], [], 0, 0.0, []
    for prompt in prompts:
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        bos_counts.append(tokens.count(llm.token_bos()) if tokens[:1] == [llm.token_bos()] else 0)
        started = time.monotonic()
        out: list[int] = []
        for token in llm.generate(tokens, top_k=1, top_p=1.0, temp=0.0, repeat_penalty=1.0):
            if token == llm.token_eos() or len(out) >= max_tokens:
                break
            out.append(token)
        gen_seconds += time.monotonic() - started
        generated += len(out)
        token_ids.append(out)
        outputs.append(llm.detokenize(out, special=True).decode("utf-8", errors="replace"))
        llm.reset()
    return {"load_seconds": round(load_seconds, 3), "tokens_per_second": round(generated / max(gen_seconds, 1e-9), 1),
            "bos_count": min(bos_counts), "outputs": outputs, "token_ids": token_ids}


def main() -> None:
    parser = argparse.ArgumentParser(description="Answer prompts with one GGUF (the smoke test's child process).")
    parser.add_argument("gguf")
    parser.add_argument("--prompts", required=True, help="JSON list of templated prompts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=512)
    args = parser.parse_args()
    print(json.dumps(run_gguf(args.gguf, json.loads(args.prompts), args.max_tokens, args.n_ctx)))


# --- the parent ---------------------------------------------------------------------------------------------------


def smoke_one(gguf: GGUFFile, prompts: list[str], cfg: SmokeConfig, timeout: float = 600) -> SmokeResult:
    proc = subprocess.run(
        [sys.executable, "-m", "tasks.smoke", gguf.path, "--prompts", json.dumps(prompts),
         "--max-tokens", str(cfg.max_tokens), "--n-ctx", str(cfg.n_ctx)],
        capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise ExportCheckError(f"{gguf.path}: llama-cpp-python exited with {proc.returncode}:\n{proc.stderr[-2000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    result = SmokeResult(gguf=gguf.path, type=gguf.type, answers=[extract_answer(o) for o in data["outputs"]], **data)
    problems = []
    if result.bos_count != 1:
        problems.append(f"{result.bos_count} BOS tokens at the start of the prompt (expected exactly one)")
    for prompt_no, (output, answer) in enumerate(zip(result.outputs, result.answers)):
        if answer is None:
            problems.append(f"prompt {prompt_no}: no closed <think> block in {output[:200]!r}")
        elif not answer:
            problems.append(f"prompt {prompt_no}: empty answer after </think> in {output[:200]!r}")
    if problems:
        raise ExportCheckError(f"{gguf.path} failed its smoke test: " + "; ".join(problems))
    return result


def hf_greedy_tokens(merged_dir: str, prompt: str, n_tokens: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    from tasks.model import load_tokenizer

    tokenizer = load_tokenizer(merged_dir)
    model = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32, use_safetensors=True)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    tokens = out[0, ids.shape[1]:].tolist()
    return tokens[: tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens


def smoke_test(merged_dir: str, ggufs: list[GGUFFile], cfg: SmokeConfig, out_dir: Path) -> SmokeReport:
    from tasks.model import load_tokenizer

    tokenizer = load_tokenizer(merged_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=False) for p in cfg.prompts]
    results = [smoke_one(g, prompts, cfg) for g in ggufs]
    reference = next(r for r in results if r.type in ("F16", "BF16", "F32"))
    hf_tokens = hf_greedy_tokens(merged_dir, prompts[0], cfg.parity_tokens)
    gguf_tokens = reference.token_ids[0][: cfg.parity_tokens]
    matching = next((i for i, (a, b) in enumerate(zip(hf_tokens, gguf_tokens)) if a != b), min(len(hf_tokens), len(gguf_tokens)))
    report = SmokeReport(results=results, parity_tokens=len(hf_tokens), parity_matching=matching, hf_tokens=hf_tokens)
    write_json(Path(out_dir) / "smoke.json", report.model_dump())
    if matching < len(hf_tokens):
        raise ExportCheckError(f"{reference.gguf}: greedy tokens diverge from the HF merged model at token {matching}: "
                               f"HF {hf_tokens} vs GGUF {gguf_tokens}")
    return report


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="smoke-test", **stage_options(retries=1, timeout_seconds=3600))
def smoke_task(merged_dir: str, ggufs: list[GGUFFile], cfg: SmokeConfig, run_dir: str) -> SmokeReport:
    """Load every GGUF in llama-cpp-python, answer in the R1 format, check parity with HF."""
    report = smoke_test(merged_dir, ggufs, cfg, Path(run_dir) / "smoke")
    create_table_artifact(
        key="gguf-smoke-test",
        table=[{"type": r.type, "file": r.gguf, "MiB": round(Path(r.gguf).stat().st_size / 2**20, 1),
                "load s": r.load_seconds, "tokens/s": r.tokens_per_second, "answer": r.answers[0]} for r in report.results],
        description=f"GGUF smoke test; F16 greedy parity with HF: {report.parity_matching}/{report.parity_tokens} tokens.",
    )
    return report


if __name__ == "__main__":
    main()
