"""The shapes people actually feed a fine-tuning tool (tests/fixtures/shapes/, sources and intents in its README.md):
each is read correctly, or refused as a whole with a reason that names the shape, never trained in a wrong meaning.

Expected records are computed here from the source JSON alone (not through r1lib/data/row_formats.py).
"""

import json

import pytest
from conftest import write_lines

from r1lib.config import DataConfig
from r1lib.data.row_rules import RowRules
from r1lib.errors import DataValidationError
from tasks.validate import validate, validate_file
from tests.conftest import ROOT

SHAPES = ROOT / "tests" / "fixtures" / "shapes"


def rows_of(name: str) -> list:
    """A fixture's rows with the standard library: a .json array or object, else one JSON value per line."""
    text = (SHAPES / name).read_text(encoding="utf-8")
    if name.endswith(".json"):
        try:
            data = json.loads(text)
            return data if isinstance(data, list) else [data]
        except json.JSONDecodeError:
            pass  # JSON lines under a .json name
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def body(record: dict) -> dict:
    return {k: record[k] for k in ("system", "messages", "reasoning")}


def turns(*pairs: tuple[str, str]) -> list[dict]:
    return [m for q, a in pairs for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]


# --- preference data: refused as a whole, never trained as SFT ---------------------------------------------------

PREFERENCE_FILES = {
    "llamafactory_dpo_en_demo.json": "rejected",
    "llamafactory_dpo_zh_demo.json": "rejected",
    "llamafactory_kto_en_demo.json": "label",
    "llamafactory_v1_dpo_demo.jsonl": "rejected_messages",
    "medicalgpt_dpo_zh_500.jsonl": "rejected",
    "medicalgpt_toolcall_dpo_zh_demo.jsonl": "rejected",
    "medicalgpt_reward_test_orpo.json": "response_rejected",
    "chatglm_efficient_tuning_oaast_rm_zh.json": "output",
}


@pytest.mark.parametrize("name", sorted(PREFERENCE_FILES))
def test_preference_files_are_refused_as_preference_data(name):
    accepted, quarantined, report = validate_file(SHAPES / name, max_chars=100_000)
    assert accepted == []
    assert report.rows == len(rows_of(name)) == len(quarantined)
    assert {(q["reason"], q["field"]) for q in quarantined} == {("preference_data", PREFERENCE_FILES[name])}
    # The fix is named: the preference method that trains the rows (ranked answers are paired by no method).
    fix = {"label": "--set train.method=kto", "output": "give each as a chosen/rejected pair"}
    expected = fix.get(PREFERENCE_FILES[name], "--set train.method=dpo")
    assert all("preference data" in q["message"] and expected in q["message"] for q in quarantined)


def test_kto_undesirable_answers_never_reach_training():
    rows = rows_of("llamafactory_kto_en_demo.json")
    assert [r["label"] for r in rows] == [True, True, True, True, False]
    accepted, quarantined, _ = validate_file(SHAPES / "llamafactory_kto_en_demo.json", max_chars=100_000)
    undesirable = rows[4]["messages"][-1]["content"]
    assert not any(undesirable in json.dumps(r, ensure_ascii=False) for r in accepted)
    assert [q["line"] for q in quarantined] == [1, 2, 3, 4, 5]


def test_dpo_row_with_a_messages_column_is_preference_data_not_sft(tmp_path):
    # The shape TRL's conversational DPO datasets take: a prompt conversation plus chosen and rejected answers.
    row = {
        "messages": [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
        "chosen": [{"role": "assistant", "content": "4"}],
        "rejected": [{"role": "assistant", "content": "5"}],
        "score_chosen": 9.0,
        "score_rejected": 1.0,
    }
    accepted, quarantined, _ = validate_file(write_lines(tmp_path / "dpo.jsonl", [row]), max_chars=100_000)
    assert accepted == [] and (quarantined[0]["reason"], quarantined[0]["field"]) == ("preference_data", "rejected")


# --- template placeholders ------------------------------------------------------------------------------------------

PLACEHOLDER_FILES = {
    # file -> the placeholder spellings it uses
    "llamafactory_identity_placeholders.json": ("{{name}}", "{{author}}"),
    "llamafactory_v1_sft_demo.jsonl": ("{{name}}", "{{author}}"),
    "swift_self_cognition.jsonl": ("{{NAME}}", "{{AUTHOR}}"),
    "chatglm_efficient_tuning_self_cognition.json": ("<NAME>", "<AUTHOR>"),
}


@pytest.mark.parametrize("name", sorted(PLACEHOLDER_FILES))
def test_unfilled_placeholders_are_refused_with_the_setting_that_fills_them(name):
    accepted, quarantined, _ = validate_file(SHAPES / name, max_chars=100_000)
    with_placeholder = [
        n
        for n, r in enumerate(rows_of(name), 1)
        if any(p in json.dumps(r, ensure_ascii=False) for p in PLACEHOLDER_FILES[name])
    ]
    assert [q["line"] for q in quarantined] == with_placeholder
    assert {q["reason"] for q in quarantined} == {"placeholder"}
    assert all("data.placeholders" in q["message"] for q in quarantined)
    assert not any("{{" in json.dumps(r, ensure_ascii=False) or "<NAME>" in json.dumps(r) for r in accepted)


@pytest.mark.parametrize("name", sorted(PLACEHOLDER_FILES))
def test_placeholders_are_filled_from_data_placeholders(name):
    rules = RowRules(placeholders={"name": "灵犀", "author": "ACME Lab"})
    accepted, quarantined, _ = validate_file(SHAPES / name, max_chars=100_000, rules=rules)
    assert quarantined == []
    name_token, author_token = PLACEHOLDER_FILES[name]
    for record in accepted:
        source = rows_of(name)[record["source"]["line"] - 1]
        answer = source.get("output") or source.get("response")
        if answer is None:  # LLaMA-Factory v1: typed parts
            answer = "".join(p["value"] for p in source["messages"][-1]["content"])
        want = answer.replace(name_token, "灵犀").replace(author_token, "ACME Lab")
        assert record["messages"][-1]["content"] == want.strip()
        assert "{{" not in record["messages"][-1]["content"]


# --- tools -----------------------------------------------------------------------------------------------------------


def test_tools_are_kept_in_the_system_prompt_or_the_row_is_refused(tmp_path):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "查询城市天气",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    row = {
        "messages": [
            {"role": "system", "content": "你是一个助手。"},
            {"role": "user", "content": "你好"},
            {"role": "assistant", "content": "你好！有什么可以帮你？"},
        ],
        "tools": tools,
    }
    path = write_lines(tmp_path / "fc.jsonl", [row, {**row, "tools": [{"type": "code_interpreter"}]}])
    accepted, quarantined, _ = validate_file(path, max_chars=100_000)
    assert accepted[0]["system"] == (
        "你是一个助手。\n\n## Tools\nYou have access to the following tools:\n\n### get_weather\n"
        'Description: 查询城市天气\n\nParameters: {"type": "object", "properties": {"city": {"type": "string"}}}'
    )
    assert (quarantined[0]["reason"], quarantined[0]["field"]) == ("tools", "tools[0]")
    accepted, quarantined, _ = validate_file(path, max_chars=100_000, rules=RowRules(tools="refuse"))
    assert accepted == [] and {q["reason"] for q in quarantined} == {"tools"}


def test_tool_calls_in_the_turns_refuse_the_row():
    accepted, quarantined, _ = validate_file(SHAPES / "functionary_test_case.json", max_chars=100_000)
    assert accepted == []
    assert (quarantined[0]["reason"], quarantined[0]["field"]) == ("unsupported_content", "messages[3].tool_calls")
    assert "functionary_test_case.json row 1:" in quarantined[0]["message"]  # a .json row, not a line


def test_prompt_only_rows_are_refused_with_no_answer_to_train_on():
    accepted, quarantined, _ = validate_file(SHAPES / "evalscope_fc_example.jsonl", max_chars=100_000)
    assert accepted == [] and {q["reason"] for q in quarantined} == {"role_order"}
    assert all("no answer to train on" in q["message"] for q in quarantined)


def test_an_untrained_last_answer_is_refused_and_an_untrained_earlier_one_is_honoured():
    accepted, quarantined, _ = validate_file(SHAPES / "xtuner_qwen35_tokenize_data.jsonl", max_chars=100_000)
    ids = {rows_of("xtuner_qwen35_tokenize_data.jsonl")[r["source"]["line"] - 1]["id"] for r in accepted}
    assert ids == {1, 2, 3, 4, 5, 6}  # id 4's "loss": false is on an earlier turn, which is never trained
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x", "loss": False}]}
    from r1lib.data.records import RecordError
    from r1lib.data.row_formats import normalize

    with pytest.raises(RecordError) as info:
        normalize(row)
    assert info.value.reason == "untrained_answer"


# --- other shapes, read correctly ---------------------------------------------------------------------------------


def test_firefly_conversation_pairs_are_read_with_their_system():
    accepted, quarantined, _ = validate_file(SHAPES / "swift_sharegpt_conversation.jsonl", max_chars=100_000)
    assert quarantined == []
    for record, row in zip(accepted, rows_of("swift_sharegpt_conversation.jsonl"), strict=True):
        pairs = [(p["human"], p["assistant"]) for p in row["conversation"]]
        assert body(record) == {"system": row.get("system", ""), "messages": turns(*pairs), "reasoning": None}


def test_qwen_query_response_history_is_read_in_order():
    accepted, quarantined, _ = validate_file(SHAPES / "swift_example_train_zh.jsonl", max_chars=100_000)
    assert quarantined == []
    for record, row in zip(accepted, rows_of("swift_example_train_zh.jsonl"), strict=True):
        pairs = [tuple(p) for p in row.get("history") or []] + [(row["query"], row["response"])]
        assert body(record) == {"system": row.get("system", ""), "messages": turns(*pairs), "reasoning": None}


def test_parallel_input_output_lists_are_a_conversation():
    accepted, quarantined, _ = validate_file(SHAPES / "chinese_vicuna_chat_data_sample.jsonl", max_chars=100_000)
    assert quarantined == []
    for record, row in zip(accepted, rows_of("chinese_vicuna_chat_data_sample.jsonl"), strict=True):
        assert record["messages"] == turns(*zip(row["input"], row["output"]))


def test_bare_arrays_of_turns_are_openai_messages():
    accepted, quarantined, _ = validate_file(SHAPES / "xtuner_openai_sft.jsonl", max_chars=100_000)
    assert quarantined == []
    for record, row in zip(accepted, rows_of("xtuner_openai_sft.jsonl"), strict=True):
        assert record["messages"] == [
            {"role": t["role"], "content": t["content"].strip()}
            if t["role"] == "assistant"
            else {"role": t["role"], "content": t["content"]}
            for t in row
        ]


def test_thought_and_solution_markers_become_reasoning_and_answer():
    accepted, quarantined, _ = validate_file(SHAPES / "easydistill_cot_eval_samples.jsonl", max_chars=100_000)
    assert quarantined == []
    for record, row in zip(accepted, rows_of("easydistill_cot_eval_samples.jsonl"), strict=True):
        thought = row["response"].split("<|begin_of_thought|>")[1].split("<|end_of_thought|>")[0]
        solution = row["response"].split("<|begin_of_solution|>")[1].split("<|end_of_solution|>")[0]
        assert (record["reasoning"], record["messages"][-1]["content"]) == (thought.strip(), solution.strip())
        assert "<|" not in json.dumps(body(record))


def test_deepseek_reasoner_dumps_are_read(tmp_path):
    # No licensed public file of this shape was found (fixtures/shapes/README.md §2): rows written here.
    rows = [
        {
            "input": "鸡兔同笼，共10个头，28只脚，各几只？",
            "reasoning_content": "设鸡x只，兔10-x只：2x+4(10-x)=28，x=6。",
            "content": "鸡6只，兔4只。",
        },
        {"question": "What is 7 x 8?", "reasoning_content": "7 x 8 = 56.", "content": "56"},
    ]
    accepted, quarantined, _ = validate_file(write_lines(tmp_path / "r1.jsonl", rows), max_chars=100_000)
    assert quarantined == []
    assert [body(r) for r in accepted] == [
        {
            "system": "",
            "messages": turns((rows[0]["input"], rows[0]["content"])),
            "reasoning": rows[0]["reasoning_content"],
        },
        {"system": "", "messages": turns((rows[1]["question"], rows[1]["content"])), "reasoning": "7 x 8 = 56."},
    ]


def test_json_lines_in_a_json_file_are_read_as_lines():
    accepted, quarantined, report = validate_file(SHAPES / "medicalgpt_reward_test_orpo.json", max_chars=100_000)
    assert report.rows == 5 and [q["line"] for q in quarantined] == [1, 2, 3, 4, 5]


# --- plain text: refused as pre-training text, with the alternatives ------------------------------------------------


@pytest.mark.parametrize(
    ("name", "rows"),
    [
        ("medicalgpt_en_article_tail500.txt", None),
        ("medicalgpt_medical_corpus.txt", None),
        ("llamafactory_c4_demo.jsonl", 3),
        ("xtuner_pretrain_example_data.jsonl", 3),
    ],
)
def test_pretraining_text_is_refused_naming_the_shape_and_the_alternatives(name, rows):
    accepted, quarantined, report = validate_file(SHAPES / name, max_chars=100_000)
    if rows is None:  # .txt: one row per paragraph (blank lines between), JSON-looking lines read as text
        text = (SHAPES / name).read_text(encoding="utf-8")
        rows = len([p for p in text.replace("\r", "").split("\n\n") if p.strip()])
    assert accepted == [] and report.rows == rows == len(quarantined)
    assert {q["reason"] for q in quarantined} == {"pretraining_text"}
    assert all("pre-training" in q["message"] for q in quarantined)


def test_txt_paragraphs_are_numbered_by_their_first_line(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text('第一段，第一行。\n第一段，第二行。\n\n\n{"问": "x"}\n', encoding="utf-8")
    _, quarantined, report = validate_file(path, max_chars=100_000)
    assert [(q["line"], json.loads(json.dumps(q["raw"]))) for q in quarantined] == [
        (1, "第一段，第一行。\n第一段，第二行。"),
        (5, '{"问": "x"}'),
    ]
    assert report.rows == 2


# --- messages a newcomer can act on ---------------------------------------------------------------------------------


def test_unknown_format_lists_every_key_and_the_accepted_formats(tmp_path):
    row = {
        "问": "什么是光合作用？",
        "答": "植物利用光能合成有机物。",
        "k3": 1,
        "k4": 2,
        "k5": 3,
        "k6": 4,
        "k7": 5,
        "k8": 6,
        "k9": 7,
    }
    _, quarantined, _ = validate_file(write_lines(tmp_path / "x.jsonl", [row]), max_chars=100_000)
    message = quarantined[0]["message"]
    assert all(key in message for key in row)
    assert "Firefly" in message and "ShareGPT" in message and "prompt/completion" in message


def test_the_rejected_share_failure_names_its_setting(tmp_path):
    cfg = DataConfig(
        train_paths=[str(SHAPES / "llamafactory_kto_en_demo.json")],
        test_path="",
        replay_path=None,
        allowed_roots=[str(SHAPES)],
    )
    with pytest.raises(DataValidationError, match=r"data\.max_rejected_fraction") as info:
        validate(cfg, tmp_path / "out")
    assert "preference data" in str(info.value) and "row 1" in str(info.value)


def test_an_empty_tools_list_is_no_tool_under_either_policy():
    name = "llamafactory_glaive_toolcall_en_demo.json"
    path = ROOT / "tests" / "fixtures" / "public" / name
    rows = json.loads(path.read_text(encoding="utf-8"))
    assert rows[0]["tools"] == "[]"
    for rules in (RowRules(), RowRules(tools="refuse")):
        accepted, _, _ = validate_file(path, max_chars=100_000, rules=rules)
        assert accepted[0]["source"]["line"] == 1 and accepted[0]["system"] == ""
