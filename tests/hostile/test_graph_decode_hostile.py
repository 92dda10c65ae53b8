"""Hostile inputs for the recorded-step decoder (r1lib/model/graph_decode.py) on a CPU, where its step runs eagerly:
whatever the decoder does not reproduce must reach HF generate, never come back as different tokens."""

from __future__ import annotations

import pytest

from tests.lib.model.test_graph_decode import EMBEDDED


def tiny_llama(attn: str = "sdpa", **changes):
    """A random-weight Llama (fp32, scaled weights: peaked logits, so greedy has no near-ties)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = {"vocab_size": 97, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}  # fmt: skip
    config = LlamaConfig(**{**shape, **changes}, attn_implementation=attn)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4)
    return model


def left_padded(rows: list[list[int]], pad: int = 0):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


ROWS = [[3, 4, 8], [9, 2, 7, 7]]


def rollout_config(**changes):
    """The GenerationConfig TRL's GRPOTrainer builds for its rollouts (greedy here), with ``changes``."""
    from transformers import GenerationConfig

    settings = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": 0, "eos_token_id": [5], "temperature": 1.0,
                "top_p": 1.0, "top_k": 0, "min_p": None, "repetition_penalty": 1.0}  # fmt: skip
    return GenerationConfig(**{**settings, **changes}, cache_implementation=None, disable_compile=True)


def hf_and_recorded(model, config, with_mask: bool = True):
    """HF generate's output and the drop-in's for ROWS, each from the same random state."""
    import torch

    from r1lib.model.graph_decode import recorded_generate

    ids, mask = left_padded(ROWS)
    inputs = {"input_ids": ids, "attention_mask": mask} if with_mask else {"input_ids": ids}
    torch.manual_seed(0)
    with torch.no_grad():
        expected = model.generate(**inputs, generation_config=config)
    torch.manual_seed(0)
    return expected, recorded_generate(model)(**inputs, generation_config=config)


def same_tokens(expected, got) -> bool:
    import torch

    width = expected.shape[1]
    return torch.equal(got[:, :width], expected) and bool((got[:, width:] == 0).all())


def test_the_tiny_llama_takes_the_recorded_path_and_matches_hf(monkeypatch):
    """The control for the tests below: a plain rollout config runs the decoder, token for token HF's."""
    from r1lib.model import graph_decode

    model, built, real = tiny_llama(), [], graph_decode.decoder_for
    monkeypatch.setattr(graph_decode, "decoder_for", lambda *a: built.append(a) or real(*a))
    expected, got = hf_and_recorded(model, rollout_config())
    assert built and same_tokens(expected, got)


def tiny_sliding_qwen2():
    """A random-weight Qwen2 whose every layer sees a window of 2 tokens (use_sliding_window)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         use_sliding_window=True, sliding_window=2, max_window_layers=0)  # fmt: skip
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.mul_(4)
    return model


def test_a_model_the_decoder_does_not_run_as_hf_does_goes_to_hf_generate():
    """recorded_generate never asked whether the decoder runs the model: sliding windows were decoded as full
    attention (and, before the layer loop, eager attention got sdpa's boolean masks)."""
    expected, got = hf_and_recorded(tiny_sliding_qwen2(), rollout_config())
    assert same_tokens(expected, got)
    expected, got = hf_and_recorded(tiny_llama("eager"), rollout_config())
    assert same_tokens(expected, got)


@pytest.mark.parametrize(
    "changes",
    [
        {"min_new_tokens": 6, "eos_token_id": [28, 24]},  # 28 and 24: the first greedy tokens of the two rows
        {"forced_eos_token_id": 5},
        {"begin_suppress_tokens": [28, 24]},
        {"sequence_bias": {(28,): -100.0}},
        {"epsilon_cutoff": 0.5, "do_sample": True},
    ],
)
def test_settings_the_decoder_does_not_apply_go_to_hf_generate(changes):
    from r1lib.model.graph_decode import generation_unsupported

    assert generation_unsupported(rollout_config(**changes)) is not None
    expected, got = hf_and_recorded(tiny_llama(), rollout_config(**changes))
    assert same_tokens(expected, got)


def test_a_dict_output_request_goes_to_hf_generate():
    import torch

    expected, got = hf_and_recorded(tiny_llama(), rollout_config(return_dict_in_generate=True))
    assert type(got) is type(expected) and not isinstance(got, torch.Tensor)


def test_unset_fields_come_from_the_model_generation_config_as_in_hf():
    """HF fills a field the call leaves unset from the model's own generation config (here min_new_tokens)."""
    model = tiny_llama()
    model.generation_config.min_new_tokens = 6
    expected, got = hf_and_recorded(model, rollout_config(eos_token_id=[28, 24]))
    assert same_tokens(expected, got)


def test_an_unset_top_k_samples_with_the_top_k_hf_uses(monkeypatch):
    import transformers.generation.utils as hf_utils

    from r1lib.model import graph_decode

    seen, sampled, real = [], [], graph_decode.decoder_for

    class Spy(hf_utils.TopKLogitsWarper):
        def __init__(self, top_k, *args, **kwargs):
            seen.append(top_k)
            super().__init__(top_k, *args, **kwargs)

    monkeypatch.setattr(hf_utils, "TopKLogitsWarper", Spy)
    monkeypatch.setattr(graph_decode, "decoder_for", lambda *a: sampled.append(a[-1]) or real(*a))
    hf_and_recorded(tiny_llama(), rollout_config(do_sample=True, top_k=None))
    assert sampled and sampled[0].top_k == (seen[0] if seen else 0)


def test_a_missing_attention_mask_goes_to_hf_generate():
    """HF infers a left-padded batch's mask from its pad tokens; the decoder attended the padding."""
    expected, got = hf_and_recorded(tiny_llama(), rollout_config(), with_mask=False)
    assert same_tokens(expected, got)


def test_evaluation_samples_with_the_top_k_hf_generate_uses(monkeypatch):
    """evaluate.temperature > 0: HF generate applied transformers' default top-k, the decoder none."""
    import transformers.generation.utils as hf_utils

    from r1lib.config import EvalConfig, ModelConfig
    from r1lib.model.generation import generate, graph_decoder
    from r1lib.model.loading import load_causal_lm, load_tokenizer

    assert EMBEDDED is not None, "the embedded model is built by scripts/bootstrap"
    model = load_causal_lm(str(EMBEDDED), ModelConfig(), four_bit=False).eval()
    tokenizer = load_tokenizer(str(EMBEDDED), trust_remote_code=False)
    seen = []

    class Spy(hf_utils.TopKLogitsWarper):
        def __init__(self, top_k, *args, **kwargs):
            seen.append(top_k)
            super().__init__(top_k, *args, **kwargs)

    monkeypatch.setattr(hf_utils, "TopKLogitsWarper", Spy)
    cfg = EvalConfig(max_new_tokens=2, batch_size=1, temperature=0.7, top_p=0.9)
    generate(model, tokenizer, ["Hi?"], cfg.model_copy(update={"kv_cache": "dynamic"}))
    decoder = graph_decoder(model, cfg.model_copy(update={"kv_cache": "static"}), 1, 16, 1, 0)
    assert decoder.sampling.top_k == (seen[0] if seen else 0)


def test_grpo_rollouts_report_hf_generate_for_a_model_the_decoder_cannot_run():
    """The log said the recorded step did the rollouts of a model the decoder cannot run, which all went to HF."""
    from r1lib.training.methods.grpo import use_recorded_rollouts

    model = tiny_sliding_qwen2()
    assert use_recorded_rollouts(model, "recorded").startswith("HF generate (sliding-window")
    assert "generate" not in vars(model)  # the model's own generate, not the drop-in
    sdpa = tiny_llama()
    assert use_recorded_rollouts(sdpa, "recorded").startswith("the recorded decode step") and "generate" in vars(sdpa)


@pytest.mark.parametrize("changes", [{"temperature": 0.0}, {"top_k": -1}, {"top_p": -0.5}])
def test_sampling_settings_hf_refuses_are_refused_not_decoded_greedily(changes):
    from r1lib.model.graph_decode import recorded_generate

    ids, mask = left_padded(ROWS)
    with pytest.raises(ValueError):
        recorded_generate(tiny_llama())(input_ids=ids, attention_mask=mask,
                                        generation_config=rollout_config(do_sample=True, **changes))  # fmt: skip


def test_a_dynamic_rope_model_goes_to_hf_generate():
    """Dynamic NTK RoPE: HF recomputes the frequencies once a sequence passes max_position_embeddings; the layer
    loop kept the first ones, so a short prompt passed the decoder's check and the tokens past 16 differed."""
    import torch

    from r1lib.config import EvalConfig
    from r1lib.model.generation import graph_decoder
    from r1lib.model.graph_decode import recorded_generate

    model = tiny_llama(max_position_embeddings=16, rope_scaling={"rope_type": "dynamic", "factor": 2.0})
    ids, mask = left_padded(ROWS)
    config = rollout_config(max_new_tokens=40)
    with torch.no_grad():  # the drop-in first: HF generate leaves the rotary's frequencies changed
        got = recorded_generate(model)(input_ids=ids, attention_mask=mask, generation_config=config)
        expected = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    assert same_tokens(expected, got)
    assert graph_decoder(model, EvalConfig(kv_cache="static"), 2, 64, 5, 0) is None
