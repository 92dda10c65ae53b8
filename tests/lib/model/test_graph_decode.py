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
    assert unsupported(model, static.model_copy(update={"temperature": 0.7})) is None  # sampling: in the graph
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


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(0.7, 0, 1.0), (1.0, 0, 0.9), (1.3, 20, 0.8), (0.5, 5, 1.0)]
)
def test_sampling_draws_from_the_distribution_hf_samples_from(temperature, top_k, top_p):
    import torch
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from r1lib.model.graph_decode import Sampling, probabilities

    torch.manual_seed(0)
    logits = torch.randn(3, 200) * 3
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    expected = warpers(None, logits.clone()).softmax(-1)
    got = probabilities(logits, Sampling(temperature=temperature, top_k=top_k, top_p=top_p))
    assert torch.allclose(got, expected, atol=1e-6)
    assert (got > 0).sum() < 200 or (top_k == 0 and top_p == 1)  # the cuts removed tokens where asked


def test_sampled_tokens_follow_their_probabilities(tiny):
    """Many draws through the decoder's own choice: each token's share is near its probability."""
    import torch

    from r1lib.model.graph_decode import Sampling, decoder_for, probabilities

    model, _, _ = tiny
    sampling = Sampling(temperature=1.0, top_p=0.95)
    decoder = decoder_for(model, batch=1, max_len=8, eos=1, pad=0, sampling=sampling)
    torch.manual_seed(1)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -8.0]]).expand(20000, -1)
    drawn = torch.bincount(decoder._choose(logits), minlength=6).float() / 20000
    expected = probabilities(logits[:1], sampling)[0]
    assert torch.allclose(drawn, expected, atol=0.015)
    assert drawn[-1] == 0  # cut by top-p: never drawn


def test_a_sampled_pass_runs_and_differs_from_greedy(tiny):
    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate

    model, tokenizer, prompts = tiny
    cfg = EvalConfig(max_new_tokens=24, batch_size=5, kv_cache="static")
    greedy, _ = generate(model, tokenizer, prompts, cfg)
    sampled, stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"temperature": 1.5}))
    assert stats.generated == len(prompts) and stats.new_tokens > 0
    assert sampled != greedy


def trl_like_config(tokenizer, **changes):
    """A GenerationConfig as TRL's GRPOTrainer builds it for its rollouts (trl 1.15, use_vllm off)."""
    from transformers import GenerationConfig

    settings = {
        "max_new_tokens": 12,
        "do_sample": True,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": [tokenizer.eos_token_id],
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": None,
        "repetition_penalty": 1.0,
        "cache_implementation": None,
    }
    return GenerationConfig(**{**settings, **changes}, disable_compile=True)


def test_recorded_generate_stands_in_for_generate_in_grpo_rollouts(tiny):
    """Greedy through the drop-in equals the model's own generate; sampled rollouts have the shape TRL slices; the
    model's train mode comes back; what the decoder does not do goes to the original generate."""
    import torch

    from r1lib.model.graph_decode import recorded_generate

    model, tokenizer, prompts = tiny
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    greedy = trl_like_config(tokenizer, do_sample=False)
    with torch.no_grad():
        expected = model.generate(**batch, generation_config=greedy)
    calls = []
    original = model.generate
    model.generate = lambda **kw: calls.append(kw) or original(**kw)
    try:
        drop_in = recorded_generate(model)
        model.train()
        got = drop_in(**batch, generation_config=greedy)
        assert model.training  # restored after the rollout ran in eval mode
        assert torch.equal(got[:, : expected.shape[1]], expected) and not calls
        torch.manual_seed(0)
        sampled = drop_in(**batch, generation_config=trl_like_config(tokenizer, temperature=1.2, top_p=0.9))
        assert sampled.shape[0] == len(prompts) and sampled.shape[1] <= batch["input_ids"].shape[1] + 12
        assert torch.equal(sampled[:, : batch["input_ids"].shape[1]], batch["input_ids"]) and not calls
        drop_in(**batch, generation_config=trl_like_config(tokenizer, repetition_penalty=1.1))
        drop_in(**batch, generation_config=trl_like_config(tokenizer, min_p=0.05))
        assert len(calls) == 2  # both went to the model's own generate
    finally:
        model.eval()
        del model.generate


def test_a_failing_decoder_hands_the_pass_to_hf_generate(tiny, monkeypatch, caplog):
    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate
    from r1lib.model.graph_decode import GraphDecoder

    model, tokenizer, prompts = tiny
    cfg = EvalConfig(max_new_tokens=8, batch_size=2)
    expected, _ = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "dynamic"}))

    def broken(self, *args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(GraphDecoder, "generate", broken)
    got, stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "static"}))
    assert got == expected and stats.generated == len(prompts)
    assert "recorded decode step failed (RuntimeError: operation not permitted" in caplog.text


def test_a_llama3_layout_decodes_the_tokens_hf_generates(tiny):
    """The layer loop on a random Llama with Llama-3's rotary scaling (R1-Distill-Llama-8B's layout, tiny), bf16-free
    float32 on a CPU: its greedy tokens equal HF generate's, and random weights run every row to the limit."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tokenizer, prompts = tiny
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.2)  # sharper logits than the default init: fewer near-ties between tokens
    dynamic, static, _, stats = both(model, tokenizer, prompts, max_new_tokens=20, batch_size=3)
    assert static == dynamic and stats.new_tokens > 0


def test_a_loop_that_does_not_compute_the_model_is_caught_before_decoding(tiny, caplog):
    """The first batch's logits are checked against the model's forward: a loop that computes something else (here
    a rotary frequency the model does not use) raises before a token is decoded."""
    import logging

    import torch

    from r1lib.model.graph_decode import decoder_for

    model, tokenizer, prompts = tiny
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts[:2], add_special_tokens=False, padding=True, return_tensors="pt")
    caplog.set_level(logging.INFO, logger="r1lib.model.graph_decode")
    decoder = decoder_for(model, batch=2, max_len=256, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    with torch.no_grad():
        decoder.generate(batch["input_ids"], batch["attention_mask"], 4)
    assert "same argmax in 100% of 1 rows" in caplog.text  # the unpadded row of the two

    decoder = decoder_for(model, batch=2, max_len=256, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id)
    decoder.loop.inv_freq = decoder.loop.inv_freq * 3  # a rotary the model does not use
    with torch.no_grad(), pytest.raises(RuntimeError, match="does not compute this model"):
        decoder.generate(batch["input_ids"], batch["attention_mask"], 4)


def test_the_decoder_does_not_depend_on_the_models_forward_keeping_its_cache(tiny, monkeypatch):
    """What a process that trained through Unsloth looks like: every Qwen2 ``forward`` replaced by one that keeps
    a cache of its own and ignores the one it is given. HF generate then decodes without context; the decoder,
    which runs the modules through its own loop and cache, still writes HF's tokens."""
    from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM

    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate

    model, tokenizer, prompts = tiny
    cfg = EvalConfig(max_new_tokens=24, batch_size=5)
    expected, _ = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "dynamic"}))
    original = Qwen2ForCausalLM.forward

    def own_cache_forward(self, *args, past_key_values=None, **kwargs):
        return original(self, *args, past_key_values=None, **kwargs)

    monkeypatch.setattr(Qwen2ForCausalLM, "forward", own_cache_forward)
    broken, _ = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "dynamic"}))
    assert broken != expected  # HF generate through such a forward loses the context
    got, stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "static"}))
    assert got == expected and stats.generated == len(prompts)


def test_a_decoder_that_cannot_be_built_hands_the_pass_to_hf_generate(tiny, monkeypatch, caplog):
    from r1lib.config import EvalConfig
    from r1lib.model import graph_decode
    from r1lib.model.generation import generate

    model, tokenizer, prompts = tiny
    cfg = EvalConfig(max_new_tokens=8, batch_size=2)
    expected, _ = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "dynamic"}))

    def no_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory while allocating the KV cache")

    monkeypatch.setattr(graph_decode, "LayerLoop", type("Broken", (graph_decode.LayerLoop,), {"__init__": no_memory}))
    got, stats = generate(model, tokenizer, prompts, cfg.model_copy(update={"kv_cache": "static"}))
    assert got == expected and stats.decoder == "HF generate: the recorded step could not be built (RuntimeError)"
    assert "could not be built (RuntimeError: CUDA out of memory" in caplog.text
