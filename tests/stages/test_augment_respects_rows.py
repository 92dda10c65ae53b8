"""Augmentation that respects the row: prompt templates in the row's language only, never on multi-turn chats or
persona/role-play rows, off for rows without reasoning unless asked, with the summary saying what was left alone
and why; the replay mix stays as it was."""

from collections import Counter

import pytest
from conftest import write_lines

from r1lib.config import AugmentConfig
from r1lib.data.language import language_of
from r1lib.data.records import make_record
from tasks.augment import all_templates, augment, merge_augmented
from tasks.validate import validate_file

TEMPLATES = all_templates(AugmentConfig())
# The text each English template adds to a prompt: none of it may reach a Chinese row.
ENGLISH_TEXT = [part.strip() for t in TEMPLATES if language_of(t) == "en" for part in t.split("{instruction}")]

# Chinese role-play rows as users bring them (the examples): a persona in the system prompt, multi-turn
# scenes, single lines without reasoning.
ROLE_PLAY = [
    {"instruction": "皇上驾到！", "output": "臣妾恭迎皇上。"},
    {"instruction": "甄夫人与二小姐觐见莞嫔娘娘。", "output": "快请进来，本宫等候多时了。"},
    {
        "system": "你是甄嬛，后宫中的莞嫔，说话端庄含蓄。",
        "conversations": [
            {"from": "human", "value": "允礼他不是外人。"},
            {"from": "gpt", "value": "既如此，便请果郡王进来说话。"},
        ],
    },
    {
        "conversations": [
            {"from": "human", "value": "娘娘，今日御花园的花开得正好。"},
            {"from": "gpt", "value": "那便陪本宫走走。"},
            {"from": "human", "value": "是，奴婢这就去准备。"},
            {"from": "gpt", "value": "去吧。"},
        ]
    },
    {"instruction": "小红有5支笔，给了小明2支，还剩几支？", "output": "<think>\n5减2等于3。\n</think>\n\n3支。"},
]


def records_of(tmp_path, rows) -> list[dict]:
    accepted, quarantined, _ = validate_file(write_lines(tmp_path / "rows.jsonl", rows), max_chars=100_000)
    assert quarantined == []
    return accepted


def test_a_chinese_role_play_file_with_default_settings_gets_no_english_template_text(tmp_path):
    records = records_of(tmp_path, ROLE_PLAY)
    out = augment(records, [], AugmentConfig(), TEMPLATES)
    texts = [m["content"] for r in out for m in r["messages"] if m["role"] == "user"]
    assert not [t for t in texts for english in ENGLISH_TEXT if english and english in t]
    added = [r for r in out if r["origin"].startswith("prompt_template")]
    # Only the one plain question with reasoning got a variant, and it is Chinese.
    assert [r["parent"] for r in added] == [records[4]["id"]]
    assert language_of(added[0]["messages"][0]["content"].replace(records[4]["messages"][0]["content"], "")) == "zh"


def test_rows_left_alone_are_counted_by_reason_and_the_summary_names_the_setting(tmp_path):
    from r1lib.data.shards import Shard
    from tasks.augment import AugmentedShard, expand, shard_rng

    records = records_of(tmp_path, ROLE_PLAY)
    skips: Counter = Counter()
    expand(records, AugmentConfig(), TEMPLATES, shard_rng(AugmentConfig(), 0), skips)
    assert skips == {"no_reasoning": 2, "system_prompt": 1, "multi_turn": 1}
    part = AugmentedShard(
        shard=Shard(path=str(tmp_path / "rows.jsonl"), rows=5), rows_in=5, origins={}, template_skips=dict(skips)
    )
    lines = dict(merge_augmented([part], tmp_path).summary_lines()[1:])
    assert "no prompt-template variant for 4 rows" in lines["augment"]
    assert "no reasoning 2 (augment.template_rows=all adds them)" in lines["augment"]


def test_rows_without_reasoning_get_templates_only_when_asked(tmp_path):
    records = records_of(tmp_path, [{"instruction": f"What is {i} + 1?", "output": str(i + 1)} for i in range(4)])
    default = augment(records, [], AugmentConfig(replay_ratio=0), TEMPLATES)
    asked = augment(records, [], AugmentConfig(replay_ratio=0, template_rows="all"), TEMPLATES)
    assert len(default) == 4
    variants = [r for r in asked if r["origin"].startswith("prompt_template")]
    assert len(variants) == 4 and all(language_of(r["messages"][0]["content"]) == "en" for r in variants)


def test_english_rows_with_reasoning_get_english_templates_and_the_replay_mix_stays(tmp_path):
    rows = [{"instruction": f"How many legs do {i} cats have?", "output": f"<think>4 x {i}</think>{4 * i}"}
            for i in range(1, 11)]  # fmt: skip
    records = records_of(tmp_path, rows)
    replay = [make_record({"system": "", "messages": [{"role": "user", "content": "Hi"},
              {"role": "assistant", "content": "Hello"}], "reasoning": None}, "general.jsonl", i + 1)
              for i in range(20)]  # fmt: skip
    out = augment(records, replay, AugmentConfig(replay_ratio=0.5), TEMPLATES)
    origins = Counter(r["origin"].split(":")[0] for r in out)
    assert origins == {"original": 10, "prompt_template": 10, "replay": 5}
    english = {k for k, t in enumerate(TEMPLATES) if language_of(t) == "en"}
    assert all(int(r["origin"].split(":")[1]) in english for r in out if r["origin"].startswith("prompt_template"))


@pytest.mark.parametrize(
    "text, language",
    [
        ("How many cats are there?", "en"),
        ("小红有5支笔。", "zh"),
        ("请解释 Python 中的 list comprehension。", "zh"),
        ("Combien de chats y a-t-il ?", "other"),
        ("猫は何匹いますか？", "other"),
        ("2 + 2 = ?", None),
    ],
)
def test_language_of(text, language):
    assert language_of(text) == language
