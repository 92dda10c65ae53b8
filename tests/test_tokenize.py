import pytest

from tasks.chat_template import THINK_CLOSE
from tasks.config import TokenizeConfig
from tasks.errors import DataValidationError
from tasks.records import make_record, normalize
from tasks.tokenize import IGNORE, decoded_example, tokenize_records


def record(instruction="Who wrote it?", output="<think>\nThe note says Ann.\n</think>\n\nAnn.", **extra):
    return make_record(normalize({"instruction": instruction, "output": output, **extra}), "mem.jsonl", 1)


def test_exactly_one_bos_and_prompt_masked(tokenizer):
    rows, quarantined, audit = tokenize_records(tokenizer, [record()], TokenizeConfig())
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    example = decoded_example(tokenizer, rows[0])
    assert example["prompt"] == "<｜begin▁of▁sentence｜><｜User｜>Who wrote it?<｜Assistant｜><think>\n"
    assert example["trained"] == "The note says Ann.\n</think>\n\nAnn.<｜end▁of▁sentence｜>"
    first_trained = labels.index(next(t for t in labels if t != IGNORE))
    assert all(t == IGNORE for t in labels[:first_trained])
    assert labels[first_trained:] == ids[first_trained:]
    assert audit == {"truncated": 0, "bos_ok": 1, "think_in_labels": 1, "eos_at_end": 1} and not quarantined


def test_prompt_matches_the_official_generation_prompt(tokenizer):
    rows, _, _ = tokenize_records(tokenizer, [record()], TokenizeConfig())
    generation_prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Who wrote it?"}],
                                                      add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(generation_prompt, add_special_tokens=False)["input_ids"]
    assert rows[0]["input_ids"][: len(prompt_ids)] == prompt_ids  # training sees exactly what inference sends


def test_think_policy_mask_keeps_reasoning_out_of_the_loss(tokenizer):
    rows, _, audit = tokenize_records(tokenizer, [record()], TokenizeConfig(think_in_loss="mask"))
    trained = tokenizer.decode([t for t in rows[0]["labels"] if t != IGNORE])
    assert trained == "</think>\n\nAnn.<｜end▁of▁sentence｜>"
    assert "The note says Ann." in tokenizer.decode(rows[0]["input_ids"])


def test_think_policy_drop_removes_reasoning(tokenizer):
    rows, _, _ = tokenize_records(tokenizer, [record()], TokenizeConfig(think_in_loss="drop"))
    assert "note says" not in tokenizer.decode(rows[0]["input_ids"])
    assert tokenizer.decode([t for t in rows[0]["labels"] if t != IGNORE]).startswith(THINK_CLOSE)


def test_system_prompt_and_multi_turn(tokenizer):
    rec = make_record(normalize({"messages": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
        {"role": "assistant", "content": "<think>\nx\n</think>\n\nb"}, {"role": "user", "content": "c"},
        {"role": "assistant", "content": "<think>\ny\n</think>\n\nd"}]}), "m.jsonl", 1)
    rows, _, _ = tokenize_records(tokenizer, [rec], TokenizeConfig())
    example = decoded_example(tokenizer, rows[0])
    # Earlier answers appear without their reasoning, as the R1 template shows them; only the last turn is trained.
    assert example["prompt"] == ("<｜begin▁of▁sentence｜>Be brief.<｜User｜>a<｜Assistant｜>b<｜end▁of▁sentence｜>"
                                 "<｜User｜>c<｜Assistant｜><think>\n")
    assert example["trained"] == "y\n</think>\n\nd<｜end▁of▁sentence｜>"


@pytest.mark.parametrize(("policy", "kept", "quarantined", "truncated"),
                         [("drop", 1, 1, 0), ("truncate", 2, 0, 1)])
def test_length_policy(tokenizer, policy, kept, quarantined, truncated):
    long = record(output="<think>\n" + "word " * 200 + "\n</think>\n\nok")
    rows, rejected, audit = tokenize_records(tokenizer, [record(), long], TokenizeConfig(max_seq_length=64, truncation=policy))
    assert (len(rows), len(rejected), audit["truncated"]) == (kept, quarantined, truncated)
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    if rejected:
        assert rejected[0]["reason"] == "too_long" and "mem.jsonl:1" in rejected[0]["message"]


def test_length_policy_fail_names_the_row(tokenizer):
    long = record(output="<think>\n" + "word " * 200 + "\n</think>\n\nok")
    with pytest.raises(DataValidationError, match=r"mem.jsonl:1: \d+ tokens exceed max_seq_length 64"):
        tokenize_records(tokenizer, [long], TokenizeConfig(max_seq_length=64, truncation="fail"))


def test_template_without_generation_think_prefix(tokenizer):
    """Older R1 templates end the generation prompt at <｜Assistant｜>: the completion then opens <think> itself."""
    import copy

    tok = copy.deepcopy(tokenizer)  # keep the session fixture untouched
    tok.chat_template = tokenizer.chat_template.replace("<｜Assistant｜><think>\\n", "<｜Assistant｜>")
    rows, _, _ = tokenize_records(tok, [record()], TokenizeConfig())
    assert decoded_example(tok, rows[0])["prompt"].endswith("<｜Assistant｜>")
    assert decoded_example(tok, rows[0])["trained"].startswith("<think>\nThe note says Ann.")
