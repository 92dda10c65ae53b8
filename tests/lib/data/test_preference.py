"""Preference layouts recognized by name: refused as SFT rows with a message naming train.method, and read by
r1lib/data/preference.py into one structure for a preference trainer (public shapes in tests/fixtures/shapes/).

Expected structures are computed here from the source rows alone."""

import json

import pytest
from conftest import write_lines

from r1lib.data.preference import normalize_preference
from r1lib.data.records import RecordError
from tasks.validate import validate_file
from tests.conftest import ROOT

SHAPES = ROOT / "tests" / "fixtures" / "shapes"

# Written here, in the layout OpenAI documents for DPO fine-tuning (no public file of it is kept in tests/).
OPENAI_DPO = [
    {
        "input": {
            "messages": [
                {"role": "system", "content": "You answer in one sentence."},
                {"role": "user", "content": "How cold is San Francisco today?"},
            ],
            "tools": [],
            "parallel_tool_calls": True,
        },
        "preferred_output": [{"role": "assistant", "content": "About 14 C in the morning, 20 C by the afternoon."}],
        "non_preferred_output": [{"role": "assistant", "content": "It is cold."}],
    }
]


def rows_of(name: str) -> list:
    text = (SHAPES / name).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_openai_dpo_rows_are_refused_as_preference_data_naming_train_method(tmp_path):
    accepted, quarantined, _ = validate_file(write_lines(tmp_path / "dpo.jsonl", OPENAI_DPO), max_chars=100_000)
    assert accepted == []
    assert (quarantined[0]["reason"], quarantined[0]["field"]) == ("preference_data", "non_preferred_output")
    assert "OpenAI DPO" in quarantined[0]["message"] and "train.method" in quarantined[0]["message"]
    # The quarantine keeps the row read into the preference structure, for the preference trainer to come.
    assert quarantined[0]["preference"] == normalize_preference(OPENAI_DPO[0])


def test_openai_dpo_rows_normalize_into_a_pair():
    row = OPENAI_DPO[0]
    assert normalize_preference(row) == {
        "kind": "pair",
        "shape": "OpenAI DPO (input, preferred_output, non_preferred_output)",
        "system": row["input"]["messages"][0]["content"],
        "prompt": [row["input"]["messages"][1]],
        "chosen": {"content": row["preferred_output"][0]["content"], "reasoning": None},
        "rejected": {"content": row["non_preferred_output"][0]["content"], "reasoning": None},
    }


@pytest.mark.parametrize(
    "row, prompt, chosen, rejected",
    [
        ({"prompt": "Q?", "chosen": "Good.", "rejected": "Bad."}, "Q?", "Good.", "Bad."),
        (
            {
                "prompt": [{"role": "user", "content": "Q?"}],
                "chosen": [{"role": "assistant", "content": "<think>\nhm\n</think>\n\nGood."}],
                "rejected": [{"role": "assistant", "content": "Bad."}],
            },
            "Q?",
            "Good.",
            "Bad.",
        ),
        (  # TRL's implicit prompt: both answers carry the whole conversation
            {
                "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Good."}],
                "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "Bad."}],
            },
            "Q?",
            "Good.",
            "Bad.",
        ),
    ],
)
def test_prompt_chosen_rejected_with_strings_or_message_lists(row, prompt, chosen, rejected):
    pair = normalize_preference(row)
    assert pair["prompt"] == [{"role": "user", "content": prompt}]
    assert (pair["chosen"]["content"], pair["rejected"]["content"]) == (chosen, rejected)


def test_a_think_block_in_a_chosen_answer_is_its_reasoning():
    pair = normalize_preference(
        {"prompt": "Q?", "chosen": "<think>\nLet me see.\n</think>\n\nGood.", "rejected": "Bad."}
    )
    assert pair["chosen"] == {"content": "Good.", "reasoning": "Let me see."}


def test_llamafactory_sharegpt_pairs_keep_their_turns():
    for row in rows_of("llamafactory_dpo_zh_demo.json"):
        pair = normalize_preference(row)
        assert pair["prompt"][-1]["content"] == row["conversations"][-1]["value"]
        assert pair["chosen"]["content"] == row["chosen"]["value"].strip()
        assert pair["rejected"]["content"] == row["rejected"]["value"].strip()


def test_kto_rows_keep_their_label():
    rows = rows_of("llamafactory_kto_en_demo.json")
    labelled = [normalize_preference(r) for r in rows]
    assert [x["label"] for x in labelled] == [r["label"] for r in rows]
    assert [x["completion"]["content"] for x in labelled] == [r["messages"][-1]["content"].strip() for r in rows]
    assert all(x["kind"] == "label" and x["prompt"][-1]["role"] == "user" for x in labelled)


def test_trl_kto_prompt_completion_label():
    x = normalize_preference({"prompt": "Q?", "completion": "A.", "label": False})
    assert (x["prompt"], x["completion"]["content"], x["label"]) == ([{"role": "user", "content": "Q?"}], "A.", False)


@pytest.mark.parametrize(
    "name",
    ["llamafactory_dpo_en_demo.json", "llamafactory_v1_dpo_demo.jsonl", "medicalgpt_dpo_zh_500.jsonl",
     "medicalgpt_reward_test_orpo.json"],
)  # fmt: skip
def test_every_public_pair_file_normalizes(name):
    assert all(normalize_preference(r)["kind"] == "pair" for r in rows_of(name))


def test_a_row_that_pairs_nothing_is_not_preference_data():
    with pytest.raises(RecordError) as info:
        normalize_preference({"instruction": "Q?", "output": "A."})
    assert info.value.reason == "not_preference"


@pytest.mark.parametrize("label", ["false", "False", 0, "no", "undesirable"])
def test_a_kto_label_that_reads_false_is_preference_data_not_an_sft_row(label):
    """A KTO row whose label is a string or a number must not pass as an SFT row (its undesirable answer imitated)."""
    from r1lib.data.row_formats import detect_format

    row = {"prompt": "Say hi", "completion": "Go away.", "label": label}
    with pytest.raises(RecordError) as refused:
        detect_format(row)
    assert refused.value.reason == "preference_data" and "train.method=kto" in str(refused.value)
    assert normalize_preference(row)["label"] is False


@pytest.mark.parametrize("label", [None, "maybe", 2, [False]])
def test_a_kto_label_that_is_not_true_or_false_is_refused_naming_the_field(label):
    row = {"prompt": "Say hi", "completion": "Hello.", "label": label}
    with pytest.raises(RecordError) as refused:
        normalize_preference(row)
    assert refused.value.reason == "wrong_type" and "'label' must be true or false" in str(refused.value)
