"""Batched decoding with a preallocated KV cache, the one-token decode step captured once as a CUDA graph.

Plain HF ``generate`` spends most of a decode step launching kernels from Python (hundreds per layer with a 4-bit
base and a LoRA adapter). Here a batch is prefilled eagerly into the decoder's own KV cache; then the step (one token
per row through every layer, the choice of the next token, the finished-row bookkeeping) is recorded once with
``torch.cuda.graph`` and replayed, so a step costs the GPU's time alone. No ``torch.compile``: recording takes one
forward's time, where compiling the decoder took 30-60 s per model on a 7B shape.

The decoder runs the model's own modules (embedding, norms, projections, MLP, head: whatever bitsandbytes, peft or
Unsloth put there) through a Llama / Qwen2 layer loop of its own (``LayerLoop``) instead of the model's ``forward``:
a process that trained through Unsloth has every Llama and Qwen2 class's ``forward`` replaced by Unsloth's, which
keeps its own cache and would never write this one.

Contract: greedy, the same tokens as greedy HF ``generate`` (left padding, the prompt's positions counted from its first
real token, a finished row padded with ``pad_token_id``), up to floating-point ties. ``Sampling``: HF's temperature,
top-k and top-p warpers in HF's order, then a draw from the softmax (the exponential-race form of ``multinomial``,
which needs no host sync). ``unsupported`` says when this path does not apply (a repetition penalty, n-gram blocking,
an architecture other than Llama / Qwen2, sliding windows); the caller then uses HF ``generate``. On a CPU the same
loop runs eagerly (what the tests compare against HF).
"""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel

log = logging.getLogger(__name__)

CHECK_EVERY = 32  # decode steps between looks at the host (all rows finished? time limit?): each look is a sync


class Sampling(BaseModel):
    """How the next token is drawn; temperature 0 is greedy (the others are then ignored)."""

    temperature: float = 0.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0


def unsupported(model, cfg) -> str | None:
    """Why the graph path cannot generate what ``cfg`` (evaluate.*) asks of ``model``; None when it can."""
    if cfg.repetition_penalty != 1.0 or cfg.no_repeat_ngram_size:
        return "a repetition penalty or no_repeat_ngram_size"
    return LayerLoop.unsupported(model)


def probabilities(logits, sampling: Sampling):
    """The distribution HF samples from: temperature, then top-k, then top-p (its warpers, in its order), softmax."""
    scores = logits.float() / sampling.temperature
    if 0 < sampling.top_k < scores.shape[-1]:
        kth = scores.topk(sampling.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if sampling.top_p < 1.0:  # HF's TopPLogitsWarper: drop the low tail whose mass is at most 1 - top_p
        ordered, order = scores.sort(dim=-1)
        tail = ordered.softmax(-1).cumsum(-1) <= 1 - sampling.top_p
        tail[:, -1] = False  # the most likely token always stays
        scores = scores.masked_fill(tail.scatter(1, order, tail), float("-inf"))
    return scores.softmax(-1)


def base_model(model):
    """The transformers model under a peft wrapper (``model`` itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


ARCHITECTURES = ("llama", "qwen2")  # the R1 distills' layer layout: pre-norm, rotary q/k, GQA, gated MLP


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LayerLoop:
    """A Llama / Qwen2 decoder run layer by layer on its own modules, with its own KV cache of ``batch`` rows and
    ``max_len`` slots: the computation of transformers' eager-sdpa forward (rotary embedding in float32, GQA
    attention scaled by head_dim ** -0.5, residuals around attention and MLP)."""

    def __init__(self, model, batch: int, max_len: int):
        import torch

        inner = base_model(model)
        config = inner.config
        self.body, self.head = inner.model, inner.lm_head
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        rotary = self.body.rotary_emb
        self.inv_freq, self.rope_scale = rotary.inv_freq.float(), float(getattr(rotary, "attention_scaling", 1.0))
        weight = self.body.embed_tokens.weight
        shape = (batch, self.kv_heads, max_len, self.head_dim)
        layers = len(self.body.layers)
        self.keys = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=weight.dtype, device=weight.device) for _ in range(layers)]

    @staticmethod
    def unsupported(model) -> str | None:
        """Why the loop cannot stand in for ``model``'s forward; None when it can."""
        inner = base_model(model)
        config = inner.config
        if getattr(config, "model_type", None) not in ARCHITECTURES:
            return f"architecture {getattr(config, 'model_type', None)!r} (the decoder runs {', '.join(ARCHITECTURES)})"
        if getattr(config, "use_sliding_window", False) or any(
            t != "full_attention" for t in getattr(config, "layer_types", None) or []
        ):
            return "sliding-window attention layers"
        body = getattr(inner, "model", None)
        if body is None or not hasattr(getattr(body, "rotary_emb", None), "inv_freq"):
            return "no model.rotary_emb.inv_freq"
        rope = str(getattr(body.rotary_emb, "rope_type", "default"))
        if "dynamic" in rope or rope == "longrope":  # HF recomputes inv_freq from the length; the loop keeps its copy
            return f"rope type {rope!r} (frequencies that change with the sequence length)"
        return None

    def forward(self, ids, positions, slots, mask):
        """Logits of each row's last token after feeding ``ids`` ([rows, tokens]) at ``positions`` (rotary) into
        cache ``slots`` ([tokens]); ``mask`` ([rows, 1, tokens, span], True: attend) says which of the first
        ``span`` slots each query sees. A prefill (several tokens) attends over its span with the key heads
        repeated, as transformers' sdpa path does, so the memory-efficient kernel takes the mask and no
        tokens x span score matrix per head is held; a one-token step lets sdpa share the key heads."""
        import torch
        import torch.nn.functional as F

        rows, tokens = ids.shape
        x = self.body.embed_tokens(ids)
        freqs = positions[:, :, None].float() * self.inv_freq[None, None, :]
        angles = torch.cat((freqs, freqs), dim=-1)
        cos = (angles.cos() * self.rope_scale).to(x.dtype)[:, None]
        sin = (angles.sin() * self.rope_scale).to(x.dtype)[:, None]
        for keys, values, layer in zip(self.keys, self.values, self.body.layers):
            attn, h = layer.self_attn, layer.input_layernorm(x)
            q = attn.q_proj(h).view(rows, tokens, self.heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(rows, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(rows, tokens, self.kv_heads, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            keys.index_copy_(2, slots, k.to(keys.dtype))
            values.index_copy_(2, slots, v.to(values.dtype))
            span_keys, span_values = keys[:, :, : mask.shape[-1]], values[:, :, : mask.shape[-1]]
            grouped = self.heads != self.kv_heads
            if grouped and tokens > 1:
                group = self.heads // self.kv_heads
                span_keys = span_keys.repeat_interleave(group, dim=1)
                span_values = span_values.repeat_interleave(group, dim=1)
            out = F.scaled_dot_product_attention(
                q, span_keys, span_values, attn_mask=mask, scale=self.head_dim**-0.5, enable_gqa=grouped and tokens == 1
            )
            x = x + attn.o_proj(out.transpose(1, 2).reshape(rows, tokens, self.heads * self.head_dim))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.head(self.body.norm(x[:, -1:]))[:, -1]


class GraphDecoder:
    """One preallocated cache and one recorded decode step for batches of ``batch`` rows and up to ``max_len``
    tokens (prompt plus new ones); reused for every batch of a generation pass. ``capture`` False (CPU): the step
    runs eagerly."""

    def __init__(
        self,
        model,
        batch: int,
        max_len: int,
        eos: int | list[int],
        pad: int,
        capture: bool,
        sampling: Sampling | None = None,
    ):
        import torch

        max_len = max(max_len, 3)  # the recording's two warm-up steps write slots 0-2
        self.model, self.batch, self.max_len, self.capture = model, batch, max_len, capture
        self.sampling = sampling if sampling is not None and sampling.temperature > 0 else None
        device = next(model.parameters()).device
        self.loop = LayerLoop(model, batch, max_len)
        long = {"dtype": torch.long, "device": device}
        self.token = torch.full((batch, 1), pad, **long)  # the token each row feeds into the next step
        self.position = torch.zeros((batch, 1), **long)  # its position id (counted from the row's first real token)
        self.slot = torch.zeros((1,), **long)  # its place in the cache, the same for every row (left padding)
        self.attended = torch.zeros((batch, max_len), dtype=torch.bool, device=device)  # cache slots a row sees
        self.finished = torch.zeros((batch,), dtype=torch.bool, device=device)
        self.sequences = torch.full((batch, max_len), pad, **long)
        self.eos = torch.tensor([eos] if isinstance(eos, int) else list(eos), **long)  # any of them ends a row
        self.pad = torch.tensor(pad, **long)
        self.graph = None
        self.checked = False

    def _check(self, input_ids, attention_mask, logits) -> None:
        """Once per decoder: the loop's last-token logits of the first batch against the model's own forward; a gap
        beyond what bf16 kernels explain (5% of the logits' range) raises, so the caller generates with HF instead
        of decoding something else than the model. The gap is logged."""
        # Up to four unpadded rows (the batch's longest prompt has none): a forward that some library replaced may
        # read left padding its own way, and the whole batch's reference would double the prefill's memory.
        rows = attention_mask.bool().all(-1).nonzero()[:4, 0]
        if rows.numel() == 0:  # every row padded (a batch padded past its longest prompt): the longest, unpadded
            rows = attention_mask.sum(-1).argmax()[None]
            input_ids = input_ids[:, input_ids.shape[1] - int(attention_mask[rows].sum()) :]
        logits = logits[rows]
        reference = self.model(input_ids=input_ids[rows], use_cache=False, logits_to_keep=1).logits[:, -1, :]
        gap = float((logits.float() - reference.float()).abs().max())
        scale = float(reference.float().abs().max())
        agree = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
        log.info(
            "recorded decoder check: last-token logits within %.4g of the model's forward (range %.4g), same argmax "
            "in %.0f%% of %d rows",
            gap,
            scale,
            100 * agree,
            logits.shape[0],
        )
        if not gap <= 0.05 * scale + 1e-3:
            raise RuntimeError(
                f"the decoder's logits differ from the model's forward by {gap:.4g} (range {scale:.4g}): "
                "its layer loop does not compute this model"
            )
        self.checked = True

    def _choose(self, logits):
        """The next token of each row from its logits: the argmax, or a draw from ``probabilities``."""
        import torch

        if self.sampling is None:
            return logits.argmax(-1)
        probs = probabilities(logits, self.sampling)
        return (probs / torch.empty_like(probs).exponential_()).argmax(-1)  # a draw from probs, no host sync

    def _step(self) -> None:
        """Feed ``token`` at ``slot``; write each row's next token (greedy, or pad once the row has finished)."""
        import torch

        self.attended.index_fill_(1, self.slot, True)
        logits = self.loop.forward(self.token, self.position, self.slot, self.attended[:, None, None, :])
        chosen = torch.where(self.finished, self.pad, self._choose(logits))
        self.slot.add_(1)
        self.sequences.index_copy_(1, self.slot, chosen[:, None])
        self.finished.logical_or_(torch.isin(chosen, self.eos))
        self.token.copy_(chosen[:, None])
        self.position.add_(1)

    def _record(self) -> None:
        """Run the step twice on a side stream (allocator and kernel warm-up, as torch.cuda.graph requires), then
        record it. The warm-up writes into the cache; ``_prefill`` resets everything a batch reads."""
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    def _prefill(self, input_ids, attention_mask) -> None:
        """Reset the state in place (the recorded step reads these very tensors), run the prompts eagerly into
        cache slots 0..length-1 and write each row's first new token. Slots past a row's end are never attended, so
        what an earlier batch left there needs no clearing."""
        import torch

        rows, length = input_ids.shape
        self.attended.zero_()
        self.attended[:, :length] = attention_mask.bool()
        self.finished.zero_()
        self.sequences.fill_(self.pad.item())
        self.sequences[:, :length] = input_ids
        positions = attention_mask.long().cumsum(-1) - 1
        positions.masked_fill_(attention_mask == 0, 1)  # what HF generate gives padding (never attended)
        causal = torch.ones((length, length), dtype=torch.bool, device=input_ids.device).tril()
        mask = causal[None, None] & self.attended[:, None, None, :length]  # the prompt's slots: nothing later yet
        # A padding query sees no key: let it see itself, or sdpa returns NaN there (masked for real rows anyway).
        mask[:, :, torch.arange(length), torch.arange(length)] = True
        logits = self.loop.forward(input_ids, positions, torch.arange(length, device=input_ids.device), mask)
        if not self.checked:
            self._check(input_ids, attention_mask, logits)
        chosen = self._choose(logits)
        self.sequences[:, length] = chosen
        self.finished.copy_(torch.isin(chosen, self.eos))
        self.token.copy_(chosen[:, None])
        self.position.copy_(positions[:, -1:] + 1)
        self.slot.fill_(length)

    def generate(self, input_ids, attention_mask, max_new_tokens: int, deadline: float | None = None):
        """Completions of a left-padded batch (at most ``batch`` rows): prompt plus up to ``max_new_tokens``
        tokens per row, like HF ``generate``'s output. Stops when every row has ended or at ``deadline``
        (``time.monotonic()``), checked every CHECK_EVERY steps."""
        import torch

        rows, length = input_ids.shape
        if rows > self.batch or length + max_new_tokens > self.max_len:
            raise ValueError(f"batch {rows}x{length}+{max_new_tokens} exceeds the decoder: {self.batch}x{self.max_len}")
        if rows < self.batch:  # the cache and the recorded step have a fixed batch: repeat the last row, drop later
            extra = self.batch - rows
            input_ids = torch.cat([input_ids, input_ids[-1:].expand(extra, -1)])
            attention_mask = torch.cat([attention_mask, attention_mask[-1:].expand(extra, -1)])
        if self.capture and self.graph is None:
            self._record()
        self._prefill(input_ids, attention_mask)
        steps = 1
        while steps < max_new_tokens:
            if self.graph is not None:
                self.graph.replay()
            else:
                self._step()
            steps += 1
            if steps % CHECK_EVERY == 0 and (
                bool(self.finished.all()) or (deadline is not None and time.monotonic() > deadline)
            ):
                break
        return self.sequences[:rows, : length + steps].clone()


def decoder_for(
    model, batch: int, max_len: int, eos: int | list[int], pad: int, sampling: Sampling | None = None
) -> GraphDecoder:
    """A GraphDecoder for ``model`` that records its step when the model is on a CUDA device."""
    device = next(model.parameters()).device
    return GraphDecoder(model, batch, max_len, eos, pad, capture=device.type == "cuda", sampling=sampling)


# GenerationConfig fields the decoder honours, and fields that cannot change the tokens (max_length: HF lets
# max_new_tokens override it). Any other field set must hold its value in NEUTRAL (or None/False).
HONOURED = frozenset({"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "pad_token_id", "eos_token_id"})
HARMLESS = frozenset(
    {"bos_token_id", "max_length", "use_cache", "cache_implementation", "disable_compile", "compile_config",
     "transformers_version", "_from_model_config"}
)  # fmt: skip
NEUTRAL = {
    "num_beams": 1, "num_return_sequences": 1, "num_beam_groups": 1, "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0,
    "min_length": 0, "min_new_tokens": 0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "length_penalty": 1.0, "diversity_penalty": 0.0, "early_stopping": False, "guidance_scale": 1.0,
}  # fmt: skip
HF_TOP_K = 50  # transformers' default top-k when a sampling config leaves top_k unset


def generation_unsupported(config) -> str | None:
    """Why a transformers ``GenerationConfig`` asks for more than the decoder does (any setting beyond HONOURED
    that would change the tokens); None when it does not."""
    for name, value in config.to_diff_dict().items():
        if name in HONOURED or name in HARMLESS or value is None or value is False or value == NEUTRAL.get(name, ...):
            continue
        return f"generation setting {name}={value!r}"
    if config.max_new_tokens is None or config.pad_token_id is None or config.eos_token_id is None:
        return "no max_new_tokens, pad_token_id or eos_token_id"
    if config.do_sample and (
        (config.temperature is not None and config.temperature <= 0)
        or (config.top_k is not None and config.top_k < 0)
        or (config.top_p is not None and config.top_p < 0)
    ):  # HF raises on these; the decoder would have decoded greedily
        return "a sampling setting HF generate refuses (temperature <= 0, a negative top_k or top_p)"
    return None


def resolved(model, config):
    """``config`` with its unset fields taken from the model's own generation config, as HF ``generate`` does."""
    import copy

    config = copy.deepcopy(config)
    config.update(**model.generation_config.to_dict(), defaults_only=True)
    return config


def recorded_generate(model):
    """A drop-in for ``model.generate(input_ids=, attention_mask=, generation_config=)`` as TRL's GRPOTrainer calls it
    for its rollouts: the same left-padded prompt-plus-completion tensor, decoded by a GraphDecoder with the model in
    eval mode (no dropout, no gradient checkpointing; train mode is restored). Anything else it is asked (other
    arguments, no attention mask, a mask that is not left padding, ``generation_unsupported`` of the config resolved
    as HF resolves it, ``LayerLoop.unsupported``) goes to the model's own ``generate``, and so does every later call
    once the recorded path has raised (logged once with the error)."""
    import torch

    original = model.generate
    state = {"failed": None, "told": set()}

    def generate(input_ids=None, attention_mask=None, generation_config=None, **other):
        config = None if generation_config is None else resolved(model, generation_config)
        why = (
            "other arguments " + ", ".join(sorted(other))
            if other
            else "no generation_config, input_ids or attention_mask"  # HF infers a missing mask from the padding
            if config is None or input_ids is None or attention_mask is None
            else "a batch that is not left-padded"  # the decoder reads each row's last column as its last token
            if not bool((attention_mask[:, 1:] >= attention_mask[:, :-1]).all())
            else generation_unsupported(config) or LayerLoop.unsupported(model)
        )
        if why or state["failed"]:
            if why and why not in state["told"]:  # once per reason: the rollouts' path is in the train log
                state["told"].add(why)
                log.info("rollout through HF generate: %s", why)
            return original(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                            **other)  # fmt: skip
        sampling = Sampling(
            temperature=(1.0 if config.temperature is None else config.temperature) if config.do_sample else 0.0,
            top_k=HF_TOP_K if config.top_k is None else config.top_k,
            top_p=config.top_p if config.top_p is not None else 1.0,
        )
        rows, length = input_ids.shape
        was_training = model.training
        model.eval()
        try:
            decoder = decoder_for(model, rows, length + config.max_new_tokens, config.eos_token_id,
                                  config.pad_token_id, sampling)  # fmt: skip
            with torch.no_grad():
                out = decoder.generate(input_ids, attention_mask, config.max_new_tokens)
        except Exception as exc:  # noqa: BLE001 - the rollout still happens, through the model's own generate
            state["failed"] = f"{type(exc).__name__}: {exc}"
            log.warning("recorded decode step failed (%s); HF generate does the rollouts from now on", state["failed"])
            return original(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config)
        finally:
            model.train(was_training)
        return out

    return generate
