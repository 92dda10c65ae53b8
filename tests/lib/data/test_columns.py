"""The data users bring: the common R1/QA layouts recognized without a mapping (public excerpts in
tests/fixtures/layouts/, sources in its README.md), any other layout mapped per input by ``data.columns`` in JSON lines,
JSON, CSV and Parquet alike, and an unknown_format message whose mapping can be pasted as it is.

Expected records are computed here from the source rows alone (not through r1lib/data/)."""

import csv
import json
import re

import pandas as pd
import pytest
from conftest import write_lines

from r1lib.config import DataConfig
from r1lib.data.columns import ColumnMap
from r1lib.data.row_rules import RowRules
from r1lib.errors import ConfigError, DataValidationError
from tasks.validate import validate, validate_file
from tests.conftest import ROOT

PUBLIC = ROOT / "tests" / "fixtures" / "layouts"


def rows(path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


def body(record: dict) -> tuple:
    return record["messages"][0]["content"], record["reasoning"], record["messages"][1]["content"]


def test_medical_o1_rows_train_their_chain_of_thought_as_reasoning():
    source = rows(PUBLIC / "medical_o1_sft_zh_excerpt.json")
    accepted, quarantined, _ = validate_file(PUBLIC / "medical_o1_sft_zh_excerpt.json", max_chars=100_000)
    assert quarantined == []
    assert [body(r) for r in accepted] == [(s["Question"], s["Complex_CoT"].strip(), s["Response"]) for s in source]


def test_math_rows_think_through_the_solution_and_answer_the_final_answer():
    source = rows(PUBLIC / "math500_excerpt.jsonl")
    accepted, quarantined, _ = validate_file(PUBLIC / "math500_excerpt.jsonl", max_chars=100_000)
    assert quarantined == []
    assert [body(r) for r in accepted] == [(s["problem"], s["solution"], s["answer"]) for s in source]


def test_belle_eval_rows_are_question_and_answer_and_an_empty_answer_is_refused():
    source = rows(PUBLIC / "belle_eval_set_excerpt.jsonl")
    accepted, quarantined, _ = validate_file(PUBLIC / "belle_eval_set_excerpt.jsonl", max_chars=100_000)
    assert [body(r) for r in accepted] == [(s["question"], None, s["std_answer"]) for s in source if s["std_answer"]]
    assert [(q["line"], q["reason"], q["field"]) for q in quarantined] == [(2, "empty_field", "std_answer")]


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"question": "Why?", "reasoning": "Because.", "answer_text": "So."}, ("Why?", "Because.", "So.")),
        ({"problem": "2+2?", "answer": 4}, ("2+2?", None, "4")),  # a number answer is its text
        ({"question": "Capital of France?", "answer": "Paris", "id": 7}, ("Capital of France?", None, "Paris")),
        ({"problem": "1+1?", "solution": "It is 2."}, ("1+1?", None, "It is 2.")),
    ],
)
def test_reasoning_and_qa_layouts_are_recognized_by_their_field_names(tmp_path, row, expected):
    accepted, quarantined, _ = validate_file(write_lines(tmp_path / "rows.jsonl", [row]), max_chars=100_000)
    assert quarantined == [] and [body(r) for r in accepted] == [expected]


def test_a_qa_csv_with_problem_and_answer_columns_trains(tmp_path):
    path = tmp_path / "qa.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerows([["problem", "answer"], ["What is 3 x 4?", "12"], ["Name a prime above 10.", "11"]])
    accepted, quarantined, _ = validate_file(path, max_chars=100_000)
    assert quarantined == []
    assert [body(r) for r in accepted] == [("What is 3 x 4?", None, "12"), ("Name a prime above 10.", None, "11")]


def test_medical_o1_as_parquet_reads_as_its_json(tmp_path):
    source = rows(PUBLIC / "medical_o1_sft_zh_excerpt.json")
    pd.DataFrame(source).to_parquet(tmp_path / "medical.parquet")
    accepted, quarantined, _ = validate_file(tmp_path / "medical.parquet", max_chars=100_000)
    expected, _, _ = validate_file(PUBLIC / "medical_o1_sft_zh_excerpt.json", max_chars=100_000)
    assert quarantined == [] and [body(r) for r in accepted] == [body(r) for r in expected]


def test_a_layout_beside_other_text_asks_for_a_mapping_instead_of_dropping_the_text(tmp_path):
    row = {"question": "Who wrote it?", "answer": "Ann", "context": "The report was written by Ann."}
    accepted, quarantined, _ = validate_file(write_lines(tmp_path / "squad.jsonl", [row]), max_chars=100_000)
    assert accepted == [] and quarantined[0]["reason"] == "unknown_format"
    assert '"context": "context"' in quarantined[0]["message"]


def _config(tmp_path, path, columns) -> DataConfig:
    return DataConfig(
        train_paths=[str(path)], test_path="", replay_path=None, allowed_roots=[str(tmp_path)], columns=columns
    )


MAPPED = [{"Frage": f"Frage {i}?", "Gedanken": f"Ich denke {i}.", "Antwort": f"Antwort {i}.", "Rolle": "Arzt"}
          for i in range(3)]  # fmt: skip
MAPPING = {"prompt": "Frage", "reasoning": "Gedanken", "answer": "Antwort", "system": "Rolle"}


def _write(tmp_path, suffix: str):
    path = tmp_path / f"rows{suffix}"
    if suffix == ".jsonl":
        write_lines(path, MAPPED)
    elif suffix == ".json":
        path.write_text(json.dumps(MAPPED, ensure_ascii=False), encoding="utf-8")
    elif suffix == ".csv":
        pd.DataFrame(MAPPED).to_csv(path, index=False)
    else:
        pd.DataFrame(MAPPED).to_parquet(path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_a_column_mapping_reads_any_layout_in_every_container(tmp_path, suffix):
    path = _write(tmp_path, suffix)
    result = validate(_config(tmp_path, path, {str(path): MAPPING}), tmp_path / "out")
    records = [json.loads(line) for line in open(result.train, encoding="utf-8")]
    assert result.quarantined == 0
    assert [(r["system"], *body(r)) for r in records] == [
        (r["Rolle"], r["Frage"], r["Gedanken"], r["Antwort"]) for r in MAPPED
    ]


def test_the_unknown_format_message_holds_a_mapping_that_pastes_as_it_is(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [{k: v for k, v in r.items() if k != "Rolle"} for r in MAPPED])
    with pytest.raises(DataValidationError) as info:
        validate(_config(tmp_path, path, {}), tmp_path / "out")
    message = str(info.value)
    assert "['Antwort', 'Frage', 'Gedanken']" in message  # the row's keys
    pasted = re.search(r"--set 'data\.columns=(\{.*?\}\})'", message).group(1)
    assert "raise the limit" not in message  # every row refused: a higher limit trains nothing
    result = validate(_config(tmp_path, path, json.loads(pasted)), tmp_path / "out2")
    assert result.quarantined == 0 and result.rows_in == 3


def test_a_mapped_column_that_is_missing_names_the_mapping(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [{"Frage": "Was?", "Gedanken": "Hm."}])
    rules = RowRules(columns={str(path): ColumnMap(prompt="Frage", answer="Antwort")})
    _, quarantined, _ = validate_file(path, max_chars=100_000, rules=rules)
    assert quarantined[0]["reason"] == "missing_field"
    assert "data.columns maps answer to 'Antwort'" in quarantined[0]["message"]


def test_a_mapping_keyed_by_no_input_is_refused(tmp_path):
    path = _write(tmp_path, ".jsonl")
    cfg = _config(tmp_path, path, {str(tmp_path / "other.jsonl"): MAPPING})
    with pytest.raises(ConfigError, match=r"data\.columns names .*other\.jsonl.* no input"):
        RowRules.of(cfg)


def test_a_mapping_keyed_by_a_folder_applies_to_its_files(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _write(folder, ".jsonl")
    result = validate(_config(tmp_path, folder, {str(folder): MAPPING}), tmp_path / "out")
    assert result.quarantined == 0 and result.rows_in == 3


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"task": "arithmetic", "query": "What is 2+2?", "response": "4"}, {"prompt": "query", "answer": "response"}),
        ({"user_id": "u_8812", "question_text": "What is 2+2?", "response": "4"},
         {"prompt": "question_text", "answer": "response"}),
        ({"subtask_name": "geometry", "problem_statement": "Area of a unit square?", "final": "1"},
         {"prompt": "problem_statement", "answer": "final"}),
        ({"question": "What is 2+2?", "answer": "4", "solution": "Two plus two makes four, so the answer is 4."},
         {"prompt": "question", "reasoning": "solution", "answer": "answer"}),
        ({"prompt": "Classify: great movie", "sentiment_analysis": "positive", "output": "The review is positive."},
         {"prompt": "prompt", "answer": "output"}),
        ({"instruction": "Translate to French", "input": "cat", "output": "chat"},
         {"prompt": "instruction", "context": "input", "answer": "output"}),
        ({"answer_letter": "A", "answer_text": "Paris is the capital.", "question": "Capital?"},
         {"prompt": "question", "answer": "answer_text"}),
    ],
)  # fmt: skip
def test_suggested_columns_skip_metadata_and_prefer_exact_names_then_text(row, expected):
    # bench/attack5 finding 12: user_id, task and subtask_name were offered as the prompt, a label as the reasoning
    from r1lib.data.columns import suggest_columns

    assert suggest_columns(row) == expected


def test_the_pasted_mapping_survives_a_quote_in_a_file_or_column_name():
    # bench/attack5 finding 13: a single quote ended the shell string of the pasted --set
    import shlex

    from r1lib.data.columns import mapping_hint

    hint = mapping_hint({"bob's query": "What?", "reply": "That."}, "bob's data.jsonl")
    words = shlex.split(hint)
    assert words[0] == "--set" and len(words) == 2 and words[1].startswith("data.columns=")
    assert json.loads(words[1].removeprefix("data.columns=")) == {
        "bob's data.jsonl": {"prompt": "bob's query", "answer": "reply"}
    }
