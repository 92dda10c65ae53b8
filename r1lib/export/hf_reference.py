"""The smoke test's HF reference: the merged export loaded with transformers, its greedy tokens and its perplexity
over held-out answer tokens, which the GGUFs must match (tasks/smoke.py).

``hf_reference`` computes it all once into an ``HFReference`` (the raw logits of the greedy steps in a ``.npy`` file
beside it). It needs only the merged folder, the smoke settings and the held-out rows, so the flow runs it on the GPU
as soon as evaluation is done, beside the export branch's convert and quantize, and the smoke test only reads it: on a
7B model, loading 30 GB at float32 no longer waits for the last GGUF.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from pydantic import BaseModel

from r1lib.config import SmokeConfig
from r1lib.errors import ExportCheckError
from r1lib.io import atomic_path, sha256_file, write_json
from r1lib.model.generation import own_generation_config
from r1lib.paths import InputPath


class HFReference(BaseModel):
    """The HF merged model's side of the smoke test's parity checks."""

    merged_dir: str
    prompt: str  # the first smoke prompt, templated: the greedy parity prompt
    tokens: list[int]  # greedy, up to smoke.parity_tokens
    # .npy: the raw logits of each greedy step (a near tie's gap), where a tolerance is set
    logits: InputPath | None = None
    perplexity: float | None = None  # over ``rows`` held-out rows (answer tokens), None when there are none
    rows: int = 0
    rows_path: InputPath | None = None  # the rows as JSON, for the GGUF children
    digests: dict[str, str] = {}  # sha256 of ``logits`` and ``rows_path`` as written (``check_files``)
    dtype: str = "float32"
    seconds: float = 0.0

    def check_files(self) -> None:
        """Raise ExportCheckError naming a side file that is gone or no longer what this reference wrote."""
        for path in filter(None, (self.logits, self.rows_path)):
            expected = self.digests.get(path)
            if not Path(path).is_file():
                raise ExportCheckError(f"{path}: the smoke test's HF reference file is gone: run the smoke test again")
            if expected is None or sha256_file(path) != expected:
                raise ExportCheckError(
                    f"{path}: the smoke test's HF reference file changed after it was written: run the smoke test again"
                )


def smoke_prompts(merged_dir: str, cfg: SmokeConfig, count: int | None = None) -> list[str]:
    """The first ``count`` smoke prompts (None: all) in the merged export's chat template, as the GGUFs get them."""
    from r1lib.model.loading import load_tokenizer

    tokenizer = load_tokenizer(merged_dir, trust_remote_code=False)  # this run's own export: see load_merged
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p in cfg.prompts[:count]
    ]


def perplexity_rows(
    cfg: SmokeConfig, test_dataset: str | None, out_dir: Path, max_tokens: int | None
) -> tuple[Path | None, int]:
    """The held-out rows of the perplexity pass, at most ``max_tokens`` tokens (the smoke plan's
    ``perplexity_tokens``), written for the children (``write_perplexity_rows``): their file and count, or (None, 0)
    where no pass is asked or there are no rows."""
    if not (test_dataset and cfg.perplexity_rows and cfg.gguf_perplexity != "none" and Path(test_dataset).exists()):
        return None, 0
    path = Path(out_dir) / "perplexity_rows.json"
    n_rows = write_perplexity_rows(test_dataset, cfg.perplexity_rows, 1 << 16, path, max_tokens)
    return (path if n_rows else None), n_rows


def hf_reference(
    merged_dir: str, cfg: SmokeConfig, rows_path: Path | None, n_rows: int, out_dir: Path, prompt: str | None = None
) -> HFReference:
    """Load the merged export (float32 where it fits the GPU, else bfloat16: ``reference_dtype``), score the
    perplexity rows and take the greedy parity tokens of the first smoke prompt; the step logits go to
    ``out_dir/hf_logits.npy`` when a parity tolerance is set."""
    import numpy as np

    from r1lib.export.smoke_checks import reference_dtype
    from r1lib.model.gpu_memory import release

    started = time.monotonic()
    release()  # what earlier stages left on the GPU, before the reference loads
    prompt = prompt if prompt is not None else smoke_prompts(merged_dir, cfg, 1)[0]
    dtype = reference_dtype(merged_dir)
    loaded = load_merged(merged_dir, dtype)
    ppl = round(hf_perplexity(loaded, rows_path), 6) if n_rows and rows_path else None
    with_logits = max(cfg.parity_logit_tolerance, cfg.quantized_parity_logit_tolerance) > 0
    tokens = hf_greedy_tokens(merged_dir, prompt, cfg.parity_tokens, loaded, with_logits=with_logits)
    logits_path = None
    if with_logits:
        tokens, steps = tokens
        logits_path = Path(out_dir) / "hf_logits.npy"
        logits_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(logits_path) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.stack([s.numpy() for s in steps]) if steps else np.zeros((0, 0), np.float32))
    del loaded
    release()
    side_files = [str(p) for p in (logits_path, rows_path if n_rows else None) if p]
    return HFReference(
        digests={path: sha256_file(path) for path in side_files},
        merged_dir=str(merged_dir),
        prompt=prompt,
        tokens=tokens,
        logits=str(logits_path) if logits_path else None,
        perplexity=ppl,
        rows=n_rows if rows_path else 0,
        rows_path=str(rows_path) if rows_path and n_rows else None,
        dtype=dtype,
        seconds=round(time.monotonic() - started, 2),
    )


def reference_logits(reference: HFReference):
    """The reference's step logits (one row per greedy step), or None where none were kept."""
    import numpy as np

    return None if reference.logits is None else np.load(reference.logits, allow_pickle=False)


def load_merged(merged_dir: str, dtype: str = "float32", trust_remote_code: bool = False):
    """The merged export in ``dtype``. It is this run's own output in an architecture llama.cpp converts, so it
    needs no code of its own: ``trust_remote_code`` stays off unless a caller says otherwise."""
    import torch
    from transformers import AutoModelForCausalLM

    from r1lib.model.loading import load_tokenizer, remote_code_policy

    with remote_code_policy(merged_dir, trust_remote_code):
        model = AutoModelForCausalLM.from_pretrained(
            merged_dir,
            dtype=getattr(torch, dtype),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            device_map={"": torch.cuda.current_device()} if torch.cuda.is_available() else None,
        )
    return model.eval(), load_tokenizer(merged_dir, trust_remote_code=trust_remote_code)


def hf_greedy_tokens(merged_dir: str, prompt: str, n_tokens: int, loaded=None, with_logits: bool = False):
    """The HF merged model's greedy tokens for ``prompt`` (up to EOS); with ``with_logits`` also the raw logits of
    every step (to judge a near tie where the GGUF differs)."""
    import torch

    model, tokenizer = loaded or load_merged(merged_dir)
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
    with torch.no_grad(), own_generation_config(model):
        out = model.generate(
            ids,
            max_new_tokens=n_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            output_logits=with_logits,
            return_dict_in_generate=True,
        )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    tokens = tokens[: tokens.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in tokens else tokens
    if not with_logits:
        return tokens
    return tokens, [step[0].float().cpu() for step in out.logits[: len(tokens)]]


def write_perplexity_rows(
    test_dataset: str, n_rows: int, n_ctx_limit: int, path: Path, max_tokens: int | None = None
) -> int:
    """The first ``n_rows`` held-out rows (input_ids, labels) as JSON for the children, while they hold at most
    ``max_tokens`` tokens together; a first row longer than that is cut to it (HF and every GGUF score the same
    window), kept only while answer tokens remain in it. Returns how many rows were written."""
    from datasets import load_from_disk

    rows = load_from_disk(test_dataset)
    picked, tokens = [], 0
    for r in rows.select(range(min(n_rows, len(rows)))):
        ids, labels = r["input_ids"], r["labels"]
        if len(ids) > n_ctx_limit:
            continue
        if max_tokens is not None and tokens + len(ids) > max_tokens:
            if picked:
                break
            ids, labels = ids[:max_tokens], labels[:max_tokens]
            if all(label == -100 for label in labels[1:]):
                continue  # the prompt alone fills the window: no answer token to score
        picked.append({"input_ids": ids, "labels": labels})
        tokens += len(ids)
    write_json(path, picked)
    return len(picked)


def hf_perplexity(loaded, rows_path: Path) -> float:
    import torch

    from r1lib.model.loading import answer_token_nll

    model, _ = loaded
    total, count = 0.0, 0
    with torch.no_grad():
        for row in json.loads(rows_path.read_text(encoding="utf-8")):
            nll, n = answer_token_nll(
                model,
                torch.tensor([row["input_ids"]], device=model.device),
                torch.tensor([row["labels"]], device=model.device),
            )
            total, count = total + nll.item(), count + n
    return math.exp(total / max(count, 1))
