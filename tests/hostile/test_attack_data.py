"""Hostile data files of our own making: each one used to crash the validate stage (a bare ValueError, retried three
times, naming no file or row) or lose rows silently. Now every row is accepted, quarantined with a reason, or the
file is refused with a message that names it."""

import json

import pytest

from r1lib.errors import DataValidationError
from tasks.validate import validate_file

GOOD = {"instruction": "What is 1+1?", "output": "<think>1 plus 1</think>2"}
TURNS = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
HUGE_INT = "1" * 5000  # over Python's 4300-digit limit for int(str)


def write(tmp_path, name: str, text: str | bytes):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def check(path, expect_accepted: int, reasons: dict[str, int]):
    accepted, quarantined, report = validate_file(path, max_chars=100_000)
    assert (len(accepted), report.reasons) == (expect_accepted, reasons), [q["message"] for q in quarantined]
    assert all(q["message"].startswith(str(path)) for q in quarantined)  # file:N or file row N
    return accepted, quarantined


def test_a_json_number_over_4300_digits_quarantines_its_row_not_the_run(tmp_path):
    line = json.dumps(GOOD)
    path = write(tmp_path, "big.jsonl", f'{line}\n{{"instruction": "a", "output": "b", "n": {HUGE_INT}}}\n{line}\n')
    _, quarantined = check(path, 2, {"invalid_json": 1})
    assert quarantined[0]["line"] == 2 and "4300 digits" in quarantined[0]["message"]


def test_a_huge_number_in_a_csv_cell_of_turns_is_quarantined(tmp_path):
    cell = json.dumps([{"role": "user", "content": 1}]).replace("1", HUGE_INT).replace('"', '""')
    check(write(tmp_path, "big.csv", f'messages\n"{cell}"\n'), 0, {"wrong_type": 1})


@pytest.mark.parametrize(
    "tools",
    ['[{"name": "f", "parameters": {"x": ' + HUGE_INT + "}}]", '[{"name": "f", "parameters": ' + "[" * 100_000 + "}]"],
    ids=["huge-number", "nested-too-deep"],
)
def test_a_tools_string_that_json_cannot_read_is_quarantined_as_tools(tmp_path, tools):
    path = write(tmp_path, "tools.jsonl", json.dumps({"messages": TURNS, "tools": tools}) + "\n")
    _, quarantined = check(path, 0, {"tools": 1})
    assert quarantined[0]["field"] == "tools"


def test_a_key_given_twice_with_different_values_is_quarantined_not_picked(tmp_path):
    rows = [
        '{"instruction": "safe question", "instruction": "other question", "output": "x"}',
        '{"messages": [{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]}',
        '{"instruction": "same", "instruction": "same", "output": "x"}',  # the same value twice: harmless
    ]
    accepted, quarantined = check(write(tmp_path, "dup.jsonl", "\n".join(rows) + "\n"), 1, {"duplicate_key": 2})
    assert [q["field"] for q in quarantined] == ["instruction", "content"]
    assert accepted[0]["messages"][0]["content"] == "same"
    # in a .json array only the row with the duplicate is refused, the others are read
    array = "[" + ", ".join([rows[0], json.dumps(GOOD)]) + "]"
    _, quarantined = check(write(tmp_path, "dup.json", array), 1, {"duplicate_key": 1})
    assert quarantined[0]["line"] == 1


def test_a_duplicate_key_inside_a_csv_cell_of_turns_is_quarantined(tmp_path):
    cell = '[{"role": "user", "content": "a", "content": "b"}, {"role": "assistant", "content": "c"}]'
    check(write(tmp_path, "dup.csv", 'messages\n"' + cell.replace('"', '""') + '"\n'), 0, {"duplicate_key": 1})


def test_a_csv_with_old_mac_line_ends_is_refused_instead_of_read_as_a_header_alone(tmp_path):
    path = write(tmp_path, "cr.csv", "instruction,output\rq1,a1\rq2,a2\r")
    with pytest.raises(DataValidationError, match="bare carriage returns") as refused:
        validate_file(path, max_chars=100_000)
    assert str(path) in str(refused.value)


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path):
    path = write(tmp_path, "twice.csv", "instruction,instruction,output\nsafe,other,answer\n")
    with pytest.raises(DataValidationError, match=r"names the column\(s\) \['instruction'\] more than once"):
        validate_file(path, max_chars=100_000)


@pytest.mark.parametrize("content", [b"PAR1 not parquet at all", b"PAR1" + b"\0" * 64 + b"PAR1"], ids=["junk", "empty"])
def test_a_file_that_is_not_parquet_is_refused_naming_it(tmp_path, content):
    path = write(tmp_path, "bad.parquet", content)
    with pytest.raises(DataValidationError, match="not a readable Parquet file") as refused:
        validate_file(path, max_chars=100_000)
    assert str(path) in str(refused.value)


def test_json_lines_of_bare_turn_arrays_under_a_json_name_are_read_line_by_line(tmp_path):
    text = json.dumps(TURNS) + "\n" + json.dumps(TURNS[:1] + [{"role": "assistant", "content": "again"}]) + "\n"
    check(write(tmp_path, "turns.json", text), 2, {})
