"""The embedded tokenizer must be the real DeepSeek-R1-Distill-Qwen one: same ids, same pre-tokenizer."""

from hashlib import sha256

from r1lib.data.chat_template import R1_CHAT_TEMPLATE, extract_answer, split_reasoning
from r1lib.model.embedded import R1_QWEN_ADDED_TOKENS, R1_QWEN_VOCAB_SIZE

# The text llama.cpp's converter hashes to recognise a BPE pre-tokenizer (conversion/base.py, get_vocab_base_pre).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
DEEPSEEK_R1_QWEN_HASH = "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5"


def test_special_tokens_at_their_real_ids(tokenizer):
    for token_id, content, _ in R1_QWEN_ADDED_TOKENS:
        assert tokenizer.convert_tokens_to_ids(content) == token_id
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (151646, 151643)
    assert len(tokenizer) == 151665 < R1_QWEN_VOCAB_SIZE


def test_pre_tokenizer_is_recognised_as_deepseek_r1_qwen(tokenizer):
    assert sha256(str(tokenizer.encode(CHKTXT)).encode()).hexdigest() == DEEPSEEK_R1_QWEN_HASH


def test_plain_encoding_adds_bos_like_the_real_tokenizer(tokenizer):
    assert tokenizer("hi")["input_ids"] == [151646, 6023]
    assert tokenizer("hi", add_special_tokens=False)["input_ids"] == [6023]


def test_chat_template_matches_the_official_r1_format(tokenizer):
    assert tokenizer.chat_template == R1_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "<think>\nr\n</think>\n\nA1"},
            {"role": "user", "content": "Q2"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert text == (
        "<｜begin▁of▁sentence｜>S<｜User｜>Q1<｜Assistant｜>\n\nA1<｜end▁of▁sentence｜><｜User｜>Q2"
        "<｜Assistant｜><think>\n"
    )


def test_split_and_extract_answer():
    assert split_reasoning("<think>\nr\n</think>\n\nA") == ("r", "A")
    assert split_reasoning("no think") == (None, "no think")
    assert extract_answer("r\n</think>\n\nA<｜end▁of▁sentence｜>") == "A"
    assert extract_answer("never closed") is None


def test_embedded_model_is_built_once_and_loads_as_qwen2(tmp_path):
    import json
    from pathlib import Path

    from r1lib.config import PipelineConfig
    from r1lib.model.embedded import cache_key
    from tasks.resolve_model import resolve_model

    cfg = PipelineConfig()
    model_dir = Path(resolve_model(cfg.model, cfg.cache_dir))
    assert model_dir.name.endswith(cache_key(cfg.model.embedded))
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["vocab_size"] == R1_QWEN_VOCAB_SIZE
    assert (model_dir / "model.safetensors").exists() and not list(model_dir.glob("*.bin"))
    stats = json.loads((model_dir / "pretraining.json").read_text())
    assert stats["final_loss"] < stats["first_loss"] / 5  # it learned language before fine-tuning


def test_used_token_ids_of_a_long_file_without_the_model_length_warning(tokenizer, caplog):
    """The ids of whole shipped files (the train file is ~62k tokens, over model_max_length) are collected without
    transformers' "Token indices sequence length is longer" warning, and equal the tokenizer's own ids."""
    import logging
    from pathlib import Path

    from r1lib.model.embedded import used_token_ids

    text = Path("data/sample/train.jsonl").read_text(encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        used = used_token_ids(tokenizer, [text, "hi"])
    assert not [r for r in caplog.records if "sequence length" in r.getMessage()]
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(whole) > tokenizer.model_max_length
    assert used == sorted(set(whole) | {6023})
