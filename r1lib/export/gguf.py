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
from typing import Any

from pydantic import BaseModel

from r1lib.data.chat_template import BOS
from r1lib.io import FileStamp
from r1lib.paths import InputPath

FULL_PRECISION = ("F16", "BF16", "F32")  # GGUF types that are not quantized


class GGUFFile(BaseModel):
    path: InputPath
    type: str
    bytes: int
    tokenizer_pre: str | None = None
    sha256: str | None = None  # recorded when the export wrote the file; the smoke test and the card check it
    stamp: FileStamp | None = None  # the file's stat when it was hashed: unchanged, it is not hashed again


def verify_digests(ggufs: list[GGUFFile]) -> None:
    """Raise ExportCheckError naming the first GGUF that is gone or whose content is not what the export wrote (its
    recorded sha256): a file swapped after the run must not pass the smoke test nor ship in the card. A GGUFFile
    without a recorded digest (made by hand) is not checked. A file whose stat is still its ``stamp`` from the hashing
    (same inode, size, mtime and ctime: r1lib/io.py) holds the hashed bytes and is not read again: a 7B run's GGUFs
    are 12 GB, hashed once when written instead of three times."""
    from r1lib.errors import ExportCheckError
    from r1lib.io import sha256_file, unchanged_since

    for gguf in ggufs:
        if gguf.sha256 is None:
            continue
        path = Path(gguf.path)
        if not path.is_file():
            raise ExportCheckError(f"{path}: the GGUF the export wrote is gone; run the export again")
        if unchanged_since(path, gguf.stamp):
            continue
        found = sha256_file(path)
        if found != gguf.sha256:
            raise ExportCheckError(
                f"{path}: sha256 {found} is not {gguf.sha256}, the digest recorded when the export wrote it: the "
                "file was replaced or changed after the run. Delete it and run again to export it anew"
            )


def offline_env() -> dict:
    """The environment for export children: no hub access, whatever the caller's settings."""
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }


# GGUF value types (gguf.constants.GGUFValueType): struct formats of the scalars; 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFLayout(BaseModel):
    """What a GGUF's header says: its metadata (arrays as their length only) and where its tensor data must end."""

    metadata: dict[str, Any]
    tensors: int
    data_end: int  # the byte offset just past the last tensor's data


def read_layout(path: Path) -> GGUFLayout:
    """The header of a GGUF, read without parsing its arrays' contents: a 151k-token vocabulary is skipped by its
    string lengths (well under a second) where ``gguf.GGUFReader`` builds every entry (about half a minute on a busy
    2-core machine). Raises ValueError for anything that is not a GGUF header."""
    import mmap
    import struct

    from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType

    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = 0

        def take(fmt: str):
            nonlocal pos
            value = struct.unpack_from("<" + fmt, data, pos)
            pos += struct.calcsize("<" + fmt)
            return value[0]

        def text() -> str:
            nonlocal pos
            length = take("Q")
            if pos + length > len(data):
                raise ValueError("a string runs past the end of the file")
            pos += length
            return bytes(data[pos - length : pos]).decode("utf-8", errors="replace")

        def value(kind: int):
            nonlocal pos
            if kind in _SCALARS:
                return take(_SCALARS[kind])
            if kind == _STRING:
                return text()
            if kind != _ARRAY:
                raise ValueError(f"unknown value type {kind}")
            item, count = take("I"), take("Q")
            if item in _SCALARS:
                pos += struct.calcsize("<" + _SCALARS[item]) * count
            else:
                for _ in range(count):
                    value(item)
            return f"<array of {count}>"

        if take("I") != GGUF_MAGIC:
            raise ValueError("no GGUF magic")
        version, tensors, kvs = take("I"), take("Q"), take("Q")
        if version < 2:
            raise ValueError(f"GGUF version {version} is not supported")
        metadata = {}
        for _ in range(kvs):
            key = text()
            metadata[key] = value(take("I"))
        ends = []
        for _ in range(tensors):
            text()
            dims = [take("Q") for _ in range(take("I"))]
            qtype, offset = take("I"), take("Q")
            block, size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
            elements = 1
            for dim in dims:
                elements *= dim
            ends.append(offset + elements // block * size)
        alignment = int(metadata.get("general.alignment", GGUF_DEFAULT_ALIGNMENT))
        start = -(-pos // alignment) * alignment
        return GGUFLayout(metadata=metadata, tensors=tensors, data_end=start + max(ends, default=0))


def gguf_metadata(path: Path, key: str) -> Any:
    """One metadata value of a GGUF (an array as ``<array of N>``), or None."""
    return read_layout(path).metadata.get(key)


def check_gguf(path: Path) -> None:
    """Fail unless ``path`` is a complete GGUF: a header that parses, at least one tensor, and the file long enough to
    hold every tensor's data."""
    try:
        layout = read_layout(path)
        if not layout.tensors:
            raise ValueError("no tensors")
        size = Path(path).stat().st_size
        if size < layout.data_end:
            raise ValueError(f"{size} bytes, but its tensors need {layout.data_end}")
    except Exception as exc:  # noqa: BLE001 - any parse failure means a broken file
        raise RuntimeError(f"{path} is not a complete GGUF: {exc}") from exc


def child_code(functions: list, call: str, preamble: str = "") -> str:
    """Python source for ``python -c``: the given module-level functions and a final call, importing nothing of the
    pipeline, so a child starts in about a second instead of loading Prefect."""
    import inspect

    # Annotations stay text, as in the modules the functions come from: the child imports no typing names.
    header = "from __future__ import annotations\nimport json, logging, math, os, sys, time\nfrom pathlib import Path\n"
    header += preamble + "\n"
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
    began = started = time.monotonic()
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
        started = time.monotonic()
        nll, count = gguf_perplexity(path, rows, n_threads, n_gpu_layers)
        result.update(
            perplexity=round(math.exp(nll / max(count, 1)), 6),
            perplexity_tokens=count,
            perplexity_seconds=round(time.monotonic() - started, 3),
        )
    result["seconds"] = round(time.monotonic() - began, 3)
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
