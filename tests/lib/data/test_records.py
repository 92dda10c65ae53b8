import pytest
from conftest import r1

from r1lib.data.records import RecordError
from r1lib.data.row_formats import normalize


def test_seed_format_splits_reasoning_from_answer():
    record = normalize({"instruction": "Largest of 1, 5?", "output": r1("5 > 1.", "5")})
    assert record["messages"] == [
        {"role": "user", "content": "Largest of 1, 5?"},
        {"role": "assistant", "content": "5"},
    ]
    assert record["reasoning"] == "5 > 1."


def test_alpaca_input_is_appended_to_the_instruction():
    record = normalize({"instruction": "Translate.", "input": "猫", "output": "cat"})
    assert record["messages"][0]["content"] == "Translate.\n\n猫"
    assert record["reasoning"] is None


def test_sharegpt_with_system_turn_and_reasoning_field():
    row = {
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Hi"},
            {"from": "gpt", "value": "Hello"},
        ],
        "reasoning": "Greet back.",
    }
    record = normalize(row)
    assert record["system"] == "Be brief."
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    assert record["reasoning"] == "Greet back."


def test_messages_multi_turn_strips_reasoning_of_earlier_answers():
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": r1("x", "b")},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": r1("y", "d")},
        ]
    }
    record = normalize(row)
    assert [m["content"] for m in record["messages"]] == ["a", "b", "c", "d"]
    assert record["reasoning"] == "y"


def test_prompt_completion_pairs():
    record = normalize({"prompt": "2+2?", "completion": r1("Add.", "4")})
    assert record["messages"][-1]["content"] == "4"


@pytest.mark.parametrize(
    ("row", "reason", "field"),
    [
        ({"instruction": "x"}, "missing_field", "output"),
        ({"instruction": 3, "output": "y"}, "wrong_type", "instruction"),
        ({"instruction": " ", "output": "y"}, "empty_field", "instruction"),
        ({"instruction": "x", "output": "<think>\nno end"}, "unclosed_think", "output"),
        ({"instruction": "x", "output": "<think>\n</think>\n\ny"}, "empty_reasoning", "output"),
        ({"instruction": "x", "output": r1("r", "")}, "empty_answer", "output"),
        ({"instruction": "a\x00b", "output": "y"}, "control_character", "instruction"),
        ({"messages": [{"role": "assistant", "content": "y"}]}, "role_order", "messages[-1]"),
        ({"messages": [{"role": "robot", "content": "y"}]}, "unknown_role", "messages[0].role"),
        ({"conversations": [{"from": "system", "value": "only a system turn"}]}, "role_order", "conversations[-1]"),
        ({"foo": 1}, "unknown_format", None),
        ([1, 2], "not_an_object", None),
    ],
)
def test_bad_rows_raise_with_reason_and_field(row, reason, field):
    with pytest.raises(RecordError) as info:
        normalize(row)
    assert (info.value.reason, info.value.field) == (reason, field)
