"""The recorded-step decoder (r1lib/model/graph_decode.py) against HF generate on the embedded model: on a CPU its step
runs eagerly, so these tests check the cache, mask, position and finished-row bookkeeping the CUDA graph replays."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT

EMBEDDED = next(iter(sorted((ROOT / ".cache" / "embedded").glob("r1-distill-qwen-tiny-*"))), None)
QUESTIONS = (
    "A much longer question about the lion and the owl at the park, and what they did there?",
    "Hi?",
    "Which animal did the owl meet?",
    "你好，狮子在公园里做什么？",
    "Where is the lion?",
)


@pytest.fixture(scope="module")
def tiny():
    from r1lib.config import ModelConfig
    from r1lib.model.loading import load_causal_lm, load_tokenizer

    assert EMBEDDED is not None, "the embedded model is built by scripts/bootstrap"
    model = load_causal_lm(str(EMBEDDED), ModelConfig(), four_bit=False)
    model.eval()
    tokenizer = load_tokenizer(str(EMBEDDED), trust_remote_code=False)
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False)
        for q in QUESTIONS
    ]
    return model, tokenizer, prompts


def both(model, tokenizer, prompts, **settings):
    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate

    cfg = EvalConfig(**settings)
    dynamic, dynamic_stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "dynamic"}))
    static, static_stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "static"}))
    return dynamic, static, dynamic_stats, static_stats


def test_the_decoder_writes_the_tokens_hf_generate_writes(tiny):
    """Five prompts of different lengths (Chinese among them) in batches of 2: left padding, a last batch of one row
    (padded to the decoder's batch), rows that end early and rows that reach the limit."""
    model, tokenizer, prompts = tiny
    dynamic, static, dynamic_stats, static_stats = both(model, tokenizer, prompts, max_new_tokens=48, batch_size=2)
    assert static == dynamic
    assert static_stats.new_tokens == dynamic_stats.new_tokens > 0
    assert static_stats.truncated == dynamic_stats.truncated
    ended = sum("<｜end▁of▁sentence｜>" in text for text in static)
    assert 0 < ended  # the trained embedded model ends its answers: the finished-row path ran


def test_rows_that_hit_the_limit_match_too(tiny):
    model, tokenizer, prompts = tiny
    dynamic, static, _, stats = both(model, tokenizer, prompts, max_new_tokens=5, batch_size=4)
    assert static == dynamic and stats.truncated == len(prompts)


def test_the_decoder_runs_through_a_peft_adapter(tiny):
    """The adapter mode of evaluation: a LoRA adapter attached (non-zero B, so it changes the answers)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model, tokenizer, prompts = tiny
    torch.manual_seed(0)
    tuned = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    try:
        with torch.no_grad():
            for name, param in tuned.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.5)
        tuned.eval()
        dynamic, static, _, _ = both(tuned, tokenizer, prompts, max_new_tokens=24, batch_size=3)
        assert static == dynamic
        with tuned.disable_adapter():
            base, _, _, _ = both(tuned, tokenizer, prompts, max_new_tokens=24, batch_size=3)
        assert base != static  # the adapter was part of what the decoder ran
    finally:
        tuned.unload()


def test_the_time_limit_stops_the_decoder(tiny):
    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate

    model, tokenizer, prompts = tiny
    cfg = EvalConfig(max_new_tokens=16, batch_size=2, kv_cache="static", time_limit_s=1e-9)
    cut, stats = generate(model, tokenizer, prompts, cfg)
    assert cut.count(None) >= 1 and stats.stopped_by_time_limit


def test_which_decodings_take_the_recorded_step(tiny):
    from r1lib.config import EvalConfig
    from r1lib.model.generation import graph_decoder
    from r1lib.model.graph_decode import GraphDecoder, unsupported

    model, _, _ = tiny
    static = EvalConfig(kv_cache="static")
    assert unsupported(model, static) is None
    assert isinstance(graph_decoder(model, static, 2, 64, 1, 0), GraphDecoder)
    assert graph_decoder(model, EvalConfig(kv_cache="auto"), 2, 64, 1, 0) is None  # auto: CUDA only
    assert graph_decoder(model, EvalConfig(kv_cache="dynamic"), 2, 64, 1, 0) is None
    assert "sampling" in unsupported(model, static.model_copy(update={"temperature": 0.7}))
    assert "repetition" in unsupported(model, static.model_copy(update={"repetition_penalty": 1.1}))
    assert graph_decoder(model, static.model_copy(update={"no_repeat_ngram_size": 3}), 2, 64, 1, 0) is None


def test_a_batch_larger_than_the_decoder_is_refused(tiny):
    import torch

    from r1lib.model.graph_decode import decoder_for

    model, _, _ = tiny
    decoder = decoder_for(model, batch=2, max_len=16, eos=1, pad=0)
    with pytest.raises(ValueError, match="exceeds"):
        decoder.generate(torch.ones((3, 4), dtype=torch.long), torch.ones((3, 4), dtype=torch.long), 4)
    with pytest.raises(ValueError, match="exceeds"):
        decoder.generate(torch.ones((2, 10), dtype=torch.long), torch.ones((2, 10), dtype=torch.long), 8)
