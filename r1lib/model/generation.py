"""Generating R1 answers in batches, and scoring them against references.

Generation batches prompts by length and counts what a throughput table needs (new tokens, tokens/s) and the
completions that hit ``max_new_tokens`` inside the think block (truncated thinking). Scores: accuracy of the answer
after ``</think>`` (exact and normalized: case, spaces, trailing punctuation), R1 format
compliance (a closed think block with reasoning, then an answer), the share of empty thinking, repeated 3-grams.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import unicodedata

from pydantic import BaseModel

from r1lib.config import EvalConfig, ModelConfig
from r1lib.data.chat_template import EOS, THINK_CLOSE, THINK_OPEN, extract_answer
from r1lib.data.records import answer_of
from r1lib.data.visible import visible_text
from r1lib.errors import PermanentError
from r1lib.model.gpu_memory import GIB, available_bytes
from r1lib.model.graph_decode import HF_TOP_K, base_model

log = logging.getLogger(__name__)


_SENTENCE_END = ".!?。！？"  # what may end an answer sentence without changing what it says
_FACTORIAL_OF = frozenset("0123456789)]}")


def normalize_answer(text: str) -> str:
    """An answer for comparison: case folded, whitespace collapsed, trailing sentence punctuation and surrounding
    space dropped. Everything inside stays (signs, slashes, decimal separators, commas): ``-42`` is not ``42``,
    ``1/2`` is not ``12``, ``3,14`` is not ``3.14``."""
    text = re.sub(r"\s+", " ", text.casefold()).strip()
    while text and text[-1] in _SENTENCE_END + " " and not (text[-1] == "!" and text[-2:-1] in _FACTORIAL_OF):
        text = text[:-1]  # a "!" after a digit or bracket is a factorial (5! is 120), not the sentence's end
    return text.strip()


def shows_content(text: str) -> bool:
    """Whether a text shows a reader something beyond punctuation: a visible letter, digit or symbol once invisible
    characters (``visible_text``: format characters, blank fillers) are gone."""
    return any(unicodedata.category(c)[0] in "LNS" for c in visible_text(text))


def repetition_rate(text: str, n: int = 3) -> float:
    words = text.split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


class Decoding(BaseModel):
    """The generation settings the evaluation used (``evaluate.*``): the smoke test generates with them and the
    Modelfiles and the model card recommend them."""

    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0  # no llama.cpp / Ollama equivalent: the card notes it
    max_new_tokens: int | None = None

    @classmethod
    def of(cls, cfg: EvalConfig) -> Decoding:
        return cls(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            repetition_penalty=cfg.repetition_penalty,
            no_repeat_ngram_size=cfg.no_repeat_ngram_size,
            max_new_tokens=cfg.max_new_tokens,
        )


class GenerationStats(BaseModel):
    """How a generation pass went: what the throughput table and the truncated-thinking count read."""

    prompts: int
    generated: int  # prompts that got a completion (the rest were cut by the time limit)
    new_tokens: int  # tokens generated, up to and including each row's end-of-sentence token
    seconds: float
    tokens_per_second: float
    truncated: int  # completions that reached max_new_tokens without an end-of-sentence token
    truncated_thinking: int  # of those, the ones still inside the think block (no </think> yet)
    batch_size: int
    stopped_by_time_limit: bool
    decoder: str = "HF generate"  # what generated the pass: the recorded decode step, or HF generate and why


TOKEN_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@contextlib.contextmanager
def own_generation_config(model):
    """While the block runs, the model generates with a generation config that holds only its token ids, so the
    pipeline's settings (passed to ``generate``) and transformers' defaults decide everything else: a model folder's
    ``generation_config.json`` (beam search, extra return sequences, contrastive search, suppressed tokens) cannot
    change what evaluation or the smoke test generate. The folder's own config is restored afterwards."""
    from transformers import GenerationConfig

    inner = base_model(model)
    saved = inner.generation_config
    ignored = sorted(k for k in saved.to_diff_dict() if k not in (*TOKEN_IDS, "transformers_version"))
    if ignored:
        log.info("the model folder's generation settings %s are ignored: evaluate.* decides the decoding", ignored)
    own = GenerationConfig(**{k: getattr(saved, k, None) for k in TOKEN_IDS})
    inner.generation_config = own
    try:
        yield own
    finally:
        inner.generation_config = saved


def check_continuations(prompt_ids, out, rows: list[int]) -> None:
    """Every returned sequence continues its own prompt: as many sequences as prompts, each starting with its prompt's
    tokens (left padding included). Else a PermanentError: scores would pair rows with other rows' answers."""
    if out.shape[0] != prompt_ids.shape[0] or not bool((out[:, : prompt_ids.shape[1]] == prompt_ids).all()):
        raise PermanentError(
            f"generation returned {out.shape[0]} sequences for {prompt_ids.shape[0]} prompts (rows {rows[:5]}...), "
            "or a sequence that does not continue its prompt: evaluation cannot score them against their references"
        )


def generate(
    model,
    tokenizer,
    prompts: list[str],
    cfg: EvalConfig,
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
) -> tuple[list[str | None], GenerationStats]:
    """Completions of the prompts (already templated), in their order; None for prompts the time limit cut off.

    Prompts are batched by length (shortest first, left-padded), so a batch pads little and the time limit leaves the
    fewest rows ungenerated; each row stops at the end-of-sentence token, a batch when all its rows have. The last
    batch that runs is bounded by the time left (``max_time``).
    """
    import torch

    device = next(model.parameters()).device
    batch_size = batch_size or cfg.batch_size
    max_new_tokens = max_new_tokens or cfg.max_new_tokens
    tokenizer.padding_side = "left"
    eos = tokenizer.eos_token_id
    kwargs = {
        "max_new_tokens": max_new_tokens,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos,
        "repetition_penalty": cfg.repetition_penalty,
        "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
        "do_sample": cfg.temperature > 0,
    }
    if cfg.temperature > 0:  # top-k stated, so HF and the recorded step sample from one distribution
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=HF_TOP_K)
    from tqdm.auto import tqdm

    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    try:
        decoder = graph_decoder(
            model, cfg, min(batch_size, len(prompts)), max(lengths, default=0) + max_new_tokens, eos,
            tokenizer.pad_token_id,
        )  # fmt: skip
        path = (
            f"HF generate{hf_reason(model, cfg)}"
            if decoder is None
            else "recorded decode step" + (" (CUDA graph)" if decoder.capture else "")
        )
    except Exception as exc:  # noqa: BLE001 - building the decoder must not fail the pass either
        log.warning("the recorded decode step could not be built (%s: %s); HF generate does this pass",
                    type(exc).__name__, str(exc)[:300])  # fmt: skip
        decoder, path = None, f"HF generate: the recorded step could not be built ({type(exc).__name__})"
    outputs: list[str | None] = [None] * len(prompts)
    new_tokens = truncated = truncated_thinking = done = 0
    started, stopped = time.monotonic(), False
    for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch"):
        if time.monotonic() - started > cfg.time_limit_s:
            stopped = True
            log.warning("evaluation generation stopped by its time limit after %d prompts", done)
            break
        rows = order[start : start + batch_size]
        batch = tokenizer([prompts[i] for i in rows], add_special_tokens=False, padding=True, return_tensors="pt")
        batch = batch.to(device)
        remaining = max(cfg.time_limit_s - (time.monotonic() - started), 1.0)
        with torch.no_grad(), own_generation_config(model):  # max_time also bounds the batch at the limit
            out = None
            if decoder is not None:
                try:
                    out = decoder.generate(
                        batch["input_ids"], batch["attention_mask"], max_new_tokens, time.monotonic() + remaining
                    )
                except Exception as exc:  # noqa: BLE001 - the pass goes on with HF generate
                    log.warning("the recorded decode step failed (%s: %s); HF generate does the rest of this pass",
                                type(exc).__name__, str(exc)[:300])  # fmt: skip
                    decoder, path = None, f"HF generate after the recorded step failed ({type(exc).__name__})"
            if out is None:
                out = model.generate(**batch, **kwargs, max_time=remaining, use_cache=True)
        check_continuations(batch["input_ids"], out, rows)
        for i, ids in zip(rows, out[:, batch["input_ids"].shape[1] :].tolist()):
            ended = eos in ids
            ids = ids[: ids.index(eos) + 1] if ended else ids
            text = tokenizer.decode(ids, skip_special_tokens=False)
            outputs[i] = text
            new_tokens += len(ids)
            if not ended and len(ids) >= max_new_tokens:
                truncated += 1
                truncated_thinking += THINK_CLOSE not in text
        done += len(rows)
    seconds = time.monotonic() - started
    stats = GenerationStats(
        prompts=len(prompts),
        generated=done,
        new_tokens=new_tokens,
        seconds=round(seconds, 3),
        tokens_per_second=round(new_tokens / max(seconds, 1e-9), 1),
        truncated=truncated,
        truncated_thinking=truncated_thinking,
        batch_size=batch_size,
        stopped_by_time_limit=stopped,
        decoder=path,
    )
    if truncated_thinking:  # the caller warns where it matters (the fine-tuned model's answers: tasks/evaluate.py)
        log.info(
            "%d of %d generations reached max_new_tokens=%d inside the think block (truncated thinking: no answer "
            "to score; raise evaluate.max_new_tokens to let them finish)",
            truncated_thinking,
            done,
            max_new_tokens,
        )
    return outputs, stats


def asks_recorded_step(model, cfg: EvalConfig) -> bool:
    """Whether ``evaluate.kv_cache`` asks for the recorded step: ``static``, or ``auto`` on a CUDA device."""
    on_cuda = next(model.parameters()).device.type == "cuda"
    return cfg.kv_cache == "static" or (cfg.kv_cache == "auto" and on_cuda)


def hf_reason(model, cfg: EvalConfig) -> str:
    """Why HF ``generate`` does a pass whose ``evaluate.kv_cache`` asks for the recorded step (``: <why>``), for the
    pass's ``decoder``; empty where it does not ask for it."""
    from r1lib.model.graph_decode import unsupported

    why = unsupported(model, cfg) if asks_recorded_step(model, cfg) else None
    return f": {why} needs it" if why else ""


def graph_decoder(model, cfg: EvalConfig, batch: int, max_len: int, eos: int, pad: int):
    """The recorded-step decoder (r1lib/model/graph_decode.py) when ``evaluate.kv_cache`` asks for it (``static``,
    or ``auto`` on a CUDA device) and it supports the decoding; None: HF ``generate``."""
    from r1lib.model.graph_decode import Sampling, decoder_for, unsupported

    if not asks_recorded_step(model, cfg) or batch < 1:
        return None
    why = unsupported(model, cfg)
    if why is not None:
        log.info("evaluate.kv_cache = %s: %s needs HF generate, which this pass uses", cfg.kv_cache, why)
        return None
    sampling = Sampling(temperature=cfg.temperature, top_k=HF_TOP_K, top_p=cfg.top_p)
    return decoder_for(model, batch, max_len, eos, pad, sampling)


def format_check(completion: str) -> tuple[bool, bool]:
    """(R1 format ok, thinking empty) of a completion that follows the generation prompt (which opens ``<think>``).

    OK means: exactly one ``</think>``, reasoning before it, no second ``<think>``, an answer after; reasoning and
    answer each show something (``shows_content``: not only invisible characters or a ".").
    """
    if completion.count(THINK_CLOSE) != 1:
        return False, False
    reasoning, answer = completion.split(THINK_CLOSE, 1)
    reasoning = reasoning.replace(THINK_OPEN, "", 1).strip()
    answer = answer.replace(EOS, "").strip()
    shown = shows_content(reasoning) and shows_content(answer)
    ok = shown and THINK_OPEN not in reasoning and THINK_OPEN not in answer
    return ok, not reasoning


def score_generations(records: list[dict], completions: list[str]) -> dict:
    """Accuracy (reasoning stripped; exact and normalized), format compliance and repetition of the generations."""
    exact = normalized = format_ok = empty = 0
    repetition = 0.0
    pairs = [(r, c) for r, c in zip(records, completions) if c is not None]  # None: cut by the time limit
    for record, completion in pairs:
        completion = completion.split(EOS, 1)[0]  # padding after EOS in a batch is not part of the answer
        answer = extract_answer(completion)
        gold = answer_of(record).strip()
        exact += answer == gold
        normalized += answer is not None and normalize_answer(answer) == normalize_answer(gold)
        ok, empty_thinking = format_check(completion)
        format_ok += ok
        empty += empty_thinking
        repetition += repetition_rate(completion)
    n = max(len(pairs), 1)
    return {
        "accuracy": round(exact / n, 4),
        "accuracy_normalized": round(normalized / n, 4),
        "format_ok": round(format_ok / n, 4),
        "empty_thinking": round(empty / n, 4),
        "repetition_rate": round(repetition / n, 4),
        "generated": len(pairs),
    }


def generation_plan(
    cfg: EvalConfig, model_dir: str, model_cfg: ModelConfig, longest_prompt: int, longest_row: int = 0
) -> dict:
    """How to generate: ``mode`` (merged or adapter), ``batch`` and why, from the memory left after the 4-bit model
    loaded. Merged needs the decoder's linears at full precision; both need the cache of a batch of rows. Also
    ``perplexity_batch``: held-out rows of up to ``longest_row`` tokens per perplexity forward (the MLP's
    intermediate activations of a whole row are what a forward pass holds at its peak)."""
    from r1lib.model.shape import ModelShape

    budget, shape = available_bytes(), ModelShape.read(model_dir)
    modes = ["merged", "adapter"] if cfg.generation == "auto" else [cfg.generation]
    if not model_cfg.load_in_4bit:
        modes = ["merged"]  # the base is already at full precision: merging the adapter costs nothing more
    if budget is None or shape is None:
        why = "no CUDA device" if budget is None else f"no Llama/Qwen2-style config.json in {model_dir}"
        return {
            "mode": modes[0],
            "batch": cfg.batch_size,
            "perplexity_batch": cfg.batch_size,
            "reason": f"{why}: {modes[0]} at the configured batch",
        }
    usable = budget * 0.85 - GIB
    per_row = shape.kv_bytes_per_token() * (longest_prompt + cfg.max_new_tokens) * 1.2
    for mode in modes:
        extra = shape.linear_params * 2 if mode == "merged" and model_cfg.load_in_4bit else 0
        fits = int((usable - extra) // per_row)
        if fits >= 1 or mode == modes[-1]:
            batch = max(1, min(cfg.batch_size, fits))
            forward = 2 * (3 * shape.intermediate + 4 * shape.hidden) * max(longest_row, 1) * 1.2
            return {
                "mode": mode,
                "batch": batch,
                "perplexity_batch": max(1, min(cfg.batch_size, int((usable - extra) // forward))),
                "reason": f"{(extra + batch * per_row) / GIB:.1f} GiB needed of {usable / GIB:.1f} GiB usable"
                + ("" if batch == cfg.batch_size else f" (batch lowered from {cfg.batch_size} to fit)"),
            }
    raise AssertionError("unreachable: the last mode always returns")


def time_plain_generate(model, adapter_dir: str, tokenizer, prompts: list[str], cfg: EvalConfig, batch: int) -> dict:
    """Plain HF generate on the 4-bit model with the adapter attached (what users run), over one batch of
    ``baseline_rows`` prompts and ``baseline_tokens`` new tokens after a short warm-up; the adapter is removed
    again before returning."""
    from r1lib.model.loading import load_adapter

    rows = prompts[: min(cfg.baseline_rows, batch)]
    cfg = cfg.model_copy(update={"kv_cache": "dynamic"})  # plain HF generate, whatever the evaluation uses
    tuned = load_adapter(model, adapter_dir)
    tuned.eval()
    tokens = min(cfg.baseline_tokens, cfg.max_new_tokens)
    generate(tuned, tokenizer, rows[:1], cfg, 1, 2)  # kernels and handles initialised outside the timing
    _, stats = generate(tuned, tokenizer, rows, cfg, len(rows), tokens)
    tuned.unload()
    return {
        "rows": len(rows),
        "max_new_tokens": tokens,
        "new_tokens": stats.new_tokens,
        "tokens_per_s": stats.tokens_per_second,
    }
