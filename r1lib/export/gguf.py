"""GGUF files and the llama.cpp child processes that make, quantize and run them.

    python -m r1lib.export.gguf MODEL.gguf --prompts '["<｜User｜>Hi<｜Assistant｜><think>\\n"]'  # a smoke child

Conversion, quantization and the smoke test run llama.cpp in child processes: a crash inside it fails the step
instead of the worker. A child is a bare ``python -c`` with the functions it needs (``child_code``), so it starts in
about a second instead of importing the pipeline, and it never reaches a model hub (``offline_env``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from r1lib.data.chat_template import BOS
from r1lib.paths import InputPath

FULL_PRECISION = ("F16", "BF16", "F32")  # GGUF types that are not quantized


class GGUFFile(BaseModel):
    path: InputPath
    type: str
    bytes: int
    tokenizer_pre: str | None = None


def offline_env() -> dict:
    """The environment for export children: no hub access, whatever the caller's settings."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


def gguf_metadata(path: Path, key: str) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).get_field(key)
    return None if field is None else field.contents()


def check_gguf(path: Path) -> None:
    """Fail unless ``path`` parses as a complete GGUF (header, metadata and every tensor's data in the file)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        if not reader.tensors:
            raise ValueError("no tensors")
    except Exception as exc:  # noqa: BLE001 - any parse failure means a broken file
        raise RuntimeError(f"{path} is not a complete GGUF: {exc}") from exc


def child_code(functions: list, call: str, preamble: str = "") -> str:
    """Python source for ``python -c``: the given module-level functions and a final call, importing nothing of the
    pipeline, so a child starts in about a second instead of loading Prefect."""
    import inspect

    header = "import json, logging, math, os, sys, time\nfrom pathlib import Path\n" + preamble + "\n"
    return header + "\n\n".join(inspect.getsource(f) for f in functions) + f"\n\n{call}\n"


def default_threads() -> int:
    import os

    return max(1, min(8, (os.cpu_count() or 2) // 2))  # busy-waiting llama.cpp threads crawl on a shared, busy CPU


def gguf_perplexity(
    path: str, rows: list[dict], n_threads: int | None = None, n_gpu_layers: int = 0
) -> tuple[float, int]:
    """(summed NLL, answer tokens) of token rows under a GGUF: logits of every position from one ``eval`` per row.

    Position ``i`` predicts token ``i + 1``; only targets whose label is not -100 count, as in ``answer_token_nll``.
    """
    import numpy as np
    from llama_cpp import Llama

    n_ctx = max(64, max(len(r["input_ids"]) for r in rows))
    llm = Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=min(n_ctx, 512),
        n_threads=n_threads or default_threads(),
        logits_all=True,
        seed=0,
        n_gpu_layers=n_gpu_layers,
        verbose=False,
    )
    total, count = 0.0, 0
    for row in rows:
        ids, labels = row["input_ids"], row["labels"]
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids) - 1], dtype=np.float64)
        targets = np.asarray(labels[1:])
        keep = targets != -100
        if not keep.any():
            continue
        logits, targets = logits[keep], targets[keep]
        peak = logits.max(axis=1, keepdims=True)
        logz = np.log(np.exp(logits - peak).sum(axis=1)) + peak[:, 0]
        total += float((logz - logits[np.arange(len(targets)), targets]).sum())
        count += int(keep.sum())
    del llm
    return total, count


def _generate(llm, tokens: list[int], max_tokens: int, decoding: dict) -> list[int]:
    temp = float(decoding.get("temperature", 0.0))
    out: list[int] = []
    for token in llm.generate(
        tokens,
        top_k=1 if temp == 0 else 40,
        top_p=float(decoding.get("top_p", 1.0)),
        temp=temp,
        repeat_penalty=float(decoding.get("repetition_penalty", 1.0)),
    ):
        if token == llm.token_eos() or len(out) >= max_tokens:
            break
        out.append(token)
    return out


def run_gguf(
    path: str,
    prompts: list[str],
    max_tokens: int,
    n_ctx: int,
    decoding: dict | None = None,
    parity_tokens: int = 0,
    perplexity_rows: str | None = None,
    n_threads: int | None = None,
    n_gpu_layers: int = 0,
) -> dict:
    """Load one GGUF and answer each (already templated) prompt. Runs inside the child process."""
    from llama_cpp import Llama

    decoding = decoding or {}
    started = time.monotonic()
    llm = Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_threads=n_threads or default_threads(),
        seed=0,
        verbose=False,
        n_gpu_layers=n_gpu_layers,
    )
    load_seconds = time.monotonic() - started
    bos = llm.token_bos()
    outputs, token_ids, generated, gen_seconds, bos_counts, runtime_bos = [], [], 0, 0.0, [], []
    for prompt in prompts:
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        bos_counts.append(tokens.count(bos) if tokens[:1] == [bos] else 0)
        bare = prompt[len(BOS) :] if prompt.startswith(BOS) else prompt  # the Modelfile / llama-cli form
        runtime = llm.tokenize(bare.encode("utf-8"), add_bos=True, special=True)
        runtime_bos.append(runtime.count(bos) if runtime[:1] == [bos] else 0)
        started = time.monotonic()
        out = _generate(llm, tokens, max_tokens, decoding)
        gen_seconds += time.monotonic() - started
        generated += len(out)
        token_ids.append(out)
        outputs.append(llm.detokenize(out, special=True).decode("utf-8", errors="replace"))
        llm.reset()
    parity_ids: list[int] = []
    if parity_tokens:
        first = llm.tokenize(prompts[0].encode("utf-8"), add_bos=False, special=True)
        parity_ids = _generate(llm, first, parity_tokens, {})
    del llm
    result = {
        "load_seconds": round(load_seconds, 3),
        "tokens_per_second": round(generated / max(gen_seconds, 1e-9), 1),
        "bos_count": min(bos_counts) if min(bos_counts) != 1 else max(bos_counts),
        "bos_count_runtime": min(runtime_bos) if min(runtime_bos) != 1 else max(runtime_bos),
        "outputs": outputs,
        "token_ids": token_ids,
        "parity_ids": parity_ids,
    }
    if perplexity_rows:
        rows = json.loads(Path(perplexity_rows).read_text(encoding="utf-8"))
        nll, count = gguf_perplexity(path, rows, n_threads, n_gpu_layers)
        result.update(perplexity=round(math.exp(nll / max(count, 1)), 6), perplexity_tokens=count)
    return result


def run_gguf_files(jobs: list[dict]) -> None:
    """``run_gguf`` for each job in turn, in one process (the smoke child): one JSON line on stdout per GGUF as it
    finishes, so a crash on the third file still names it and keeps the first two results."""
    for job in jobs:
        print(json.dumps(run_gguf(**job)), flush=True)


SMOKE_CHILD = child_code(
    [default_threads, gguf_perplexity, _generate, run_gguf, run_gguf_files],
    "run_gguf_files(json.loads(sys.argv[2]))",
    preamble=f"BOS = {BOS!r}",
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Answer prompts with one GGUF (the smoke test's child process).")
    parser.add_argument("gguf")
    parser.add_argument("--prompts", required=True, help="JSON list of templated prompts")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--n-ctx", type=int, default=512)
    parser.add_argument("--decoding", default="{}", help="JSON: temperature, top_p, repetition_penalty")
    parser.add_argument("--parity-tokens", type=int, default=0)
    parser.add_argument("--perplexity-rows", help="JSON file of {input_ids, labels} rows")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    print(
        json.dumps(
            run_gguf(
                args.gguf,
                json.loads(args.prompts),
                args.max_tokens,
                args.n_ctx,
                json.loads(args.decoding),
                args.parity_tokens,
                args.perplexity_rows,
                args.threads,
            )
        )
    )


def quantize_file(source: str, qtype: str, dest: str, threads: int = 0) -> None:
    """``llama_model_quantize`` source -> dest (runs inside the quantize child process); exits non-zero on failure."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}")
    params.nthread = threads
    code = int(llama_cpp.llama_model_quantize(source.encode(), dest.encode(), params))
    if code != 0:
        sys.exit(f"llama_model_quantize returned {code}")


def quantize_files(source: str, jobs: str, threads: int = 0) -> None:
    """Every ``[qtype, dest]`` of the JSON list ``jobs`` from one source, in one process (the quantize child)."""
    for qtype, dest in json.loads(jobs):
        quantize_file(source, qtype, dest, threads)


if __name__ == "__main__":
    main()
