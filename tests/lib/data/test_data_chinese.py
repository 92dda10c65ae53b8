"""Chinese data through every data stage: validation (byte-exact text), dedup of near duplicates written without
spaces, augmentation templates, debiasing (tests/stages/test_data_debias.py) and tokenization round trips."""

import json

import pytest

from r1lib.config import AugmentConfig, DedupConfig, TokenizeConfig
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from tasks.augment import augment, load_templates, text_variant
from tasks.dedup import dedup
from tasks.tokenize import IGNORE, tokenize_records
from tasks.validate import validate_file
from tests.conftest import ROOT

SHAPES = ROOT / "tests" / "fixtures" / "shapes"


def rec(prompt: str, answer: str, line: int = 1, reasoning: str | None = None) -> dict:
    output = f"<think>\n{reasoning}\n</think>\n\n{answer}" if reasoning else answer
    return make_record(normalize({"instruction": prompt, "output": output}), "zh.jsonl", line)


def test_chinese_public_rows_are_byte_exact_after_validation():
    for name in ("swift_example_train_zh.jsonl", "chinese_vicuna_instruct_data_sample.jsonl"):
        raw = (SHAPES / name).read_text(encoding="utf-8")
        accepted, quarantined, _ = validate_file(SHAPES / name, max_chars=100_000)
        assert quarantined == []
        for record in accepted:
            row = json.loads(raw.splitlines()[record["source"]["line"] - 1])
            prompt = row.get("query") or row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            assert record["messages"][-2]["content"] == prompt
            assert record["messages"][-1]["content"] == (row.get("response") or row["output"]).strip()


def test_chinese_near_duplicates_without_spaces_are_found_and_distinct_rows_kept():
    base = (
        "小明有三个苹果，他又在学校门口的水果店买了两个苹果，回家的路上送给同学一个，晚饭后妈妈又给了他四个橘子。"
        "请问小明现在一共有几个苹果？请写出计算过程。"
    )
    rows = [
        rec(base, "四个。", 1),
        rec(base.replace("水果店", "水果摊"), "四个。", 2),  # one word changed: a near duplicate
        rec(base.replace("，", ","), "四个。", 3),  # ASCII commas for full-width ones: NFKC makes them equal
        rec("中国的首都是哪座城市？请用一句话回答。", "北京。", 4),
        rec("一年有多少个月？哪个月最短？", "十二个月，二月最短。", 5),
    ]
    kept, _, quarantine, report = dedup(rows, [], DedupConfig(num_perm=128))
    assert [r["source"]["line"] for r in kept] == [1, 4, 5]
    assert {q["line"]: q["reason"] for q in quarantine} == {2: "near_duplicate", 3: "duplicate"}
    assert all(q["duplicate_of"]["line"] == 1 for q in quarantine)
    assert report.reasons == {"near_duplicate": 1, "duplicate": 1}


def test_chinese_templates_and_text_variants_keep_the_text_exact(tmp_path):
    templates_path = tmp_path / "zh_templates.txt"
    templates_path.write_text("# 中文模板\n问题：{instruction}\n{instruction}请一步一步思考。\n", encoding="utf-8")
    templates = load_templates(templates_path)
    record = rec("小红有5支笔。她给了小明2支。她还剩几支？", "3支。", reasoning="5减2等于3。")
    cfg = AugmentConfig(prompt_variants=2, replay_ratio=0, text_variants=["punctuation", "question_first"])
    out = augment([record], [], cfg, templates)
    prompts = {r["origin"]: r["messages"][0]["content"] for r in out}
    assert prompts["prompt_template:0"] == "问题：小红有5支笔。她给了小明2支。她还剩几支？"
    assert prompts["prompt_template:1"] == "小红有5支笔。她给了小明2支。她还剩几支？请一步一步思考。"
    assert prompts["text_variant:question_first"] == "她还剩几支？小红有5支笔。她给了小明2支。"
    assert prompts["text_variant:punctuation"] == "小红有5支笔.她给了小明2支.她还剩几支?"
    assert all(r["messages"][1] == record["messages"][1] and r["reasoning"] == "5减2等于3。" for r in out)
    assert text_variant(rec("今天天气怎么样", "晴。"), "question_first") is None


@pytest.mark.parametrize("think_in_loss", ["keep", "mask", "drop"])
def test_chinese_rows_round_trip_through_tokenization(tokenizer, think_in_loss):
    records = [
        rec("鸡兔同笼，共10个头，28只脚。鸡和兔各有几只？", "鸡6只，兔4只。", 1, "设鸡x只，则2x+4(10-x)=28，x=6。"),
        make_record(
            normalize(
                {
                    "system": "你是一个乐于助人的助手。",
                    "query": "用一句话介绍长城。",
                    "response": "长城是中国古代修建的军事防御工程，全长两万多公里。",
                    "history": [["你好", "你好！有什么可以帮你？"]],
                }
            ),
            "zh.jsonl",
            2,
        ),
    ]
    cfg = TokenizeConfig(max_seq_length=1024, think_in_loss=think_in_loss)
    rows, dropped, _ = tokenize_records(tokenizer, records, cfg)
    assert dropped == []
    for record, row in zip(records, rows, strict=True):
        first = next(i for i, t in enumerate(row["labels"]) if t != IGNORE)
        prompt = tokenizer.decode(row["input_ids"][:first])
        trained = tokenizer.decode(row["input_ids"][first:])
        for message in record["messages"]:
            assert message["content"] in prompt + trained
        assert record["system"] in prompt
        assert trained.split("</think>")[-1].strip().startswith(record["messages"][-1]["content"])
        if record["reasoning"]:
            assert (record["reasoning"] in trained) == (think_in_loss == "keep")
            assert (record["reasoning"] in prompt + trained) == (think_in_loss != "drop")
