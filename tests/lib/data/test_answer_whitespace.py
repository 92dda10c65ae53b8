"""An assistant answer keeps its leading whitespace, as the user turn does (indented code, a poem's first line):
through validation, into the trained completion; only blank lines before it and whitespace after </think> on the
same line (a separator) go."""

import pytest
from conftest import r1

from r1lib.config import TokenizeConfig
from r1lib.data.chat_template import completion_text
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from tasks.tokenize import encode_batch, encode_row

CODE = "    return x\n\n"


@pytest.mark.parametrize(
    "row, answer",
    [
        ({"instruction": "  Indent it.", "output": CODE}, "    return x"),
        ({"instruction": "q", "output": "\n\n  two spaces"}, "  two spaces"),
        ({"instruction": "q", "output": r1("think", CODE)}, "    return x"),  # </think>\n\n then the indent
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>t</think> 42"}]},
            "42",
        ),  # fmt: skip
    ],
)
def test_the_answer_keeps_its_leading_whitespace_as_the_user_text_does(row, answer):
    record = make_record(normalize(row), "rows.jsonl", 1)
    assert record["messages"][-1]["content"] == answer
    if "instruction" in row:
        assert record["messages"][0]["content"] == row["instruction"]


@pytest.mark.parametrize("think_in_loss", ["keep", "mask"])
def test_the_trained_completion_holds_the_indentation(tokenizer, think_in_loss):
    record = make_record(normalize({"instruction": "Indent it.", "output": r1("think", CODE)}), "rows.jsonl", 1)
    cfg = TokenizeConfig(think_in_loss=think_in_loss)
    row = encode_row(tokenizer, record, cfg)
    assert encode_batch(tokenizer, [record], cfg)[0] == row
    trained = tokenizer.decode([t for t in row["labels"] if t != -100])
    assert "</think>\n\n    return x" in trained
    assert completion_text(None, "  a", True).startswith("</think>\n\n  a")
