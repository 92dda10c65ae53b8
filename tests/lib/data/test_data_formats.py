"""Every input format and container the validate stage reads, on realistic public-style rows."""

import json

import pandas as pd
import pytest
from conftest import r1, write_lines

from r1lib.config import DataConfig
from r1lib.data.inputs import expand_inputs
from r1lib.data.records import RecordError, check_schema, make_record
from r1lib.data.row_formats import detect_format, normalize
from r1lib.errors import DataValidationError
from r1lib.io import read_jsonl, write_jsonl
from tasks.validate import validate, validate_file

# Rows shaped like the public datasets they imitate.
ALPACA = {
    "instruction": "Give three tips for staying healthy.",
    "input": "",
    "output": "1. Eat a balanced diet.\n2. Exercise regularly.\n3. Get enough sleep.",
}
ALPACA_INPUT = {
    "instruction": "Translate the sentence into French.",
    "input": "The cat sleeps.",
    "output": "Le chat dort.",
}
SHAREGPT = {
    "id": "QWJhYvA_0",
    "conversations": [
        {"from": "system", "value": "You are a helpful assistant."},
        {"from": "human", "value": "What is the boiling point of water at sea level?"},
        {"from": "gpt", "value": "100 °C (212 °F)."},
        {"from": "human", "value": "And in Kelvin?"},
        {"from": "gpt", "value": r1("100 °C plus 273.15.", "373.15 K")},
    ],
}
OPENAI = {
    "messages": [
        {"role": "system", "content": "Answer with a number."},
        {"role": "user", "content": "How many legs does a spider have?"},
        {"role": "assistant", "content": "8"},
    ]
}
R1_FIELD = {
    "messages": [{"role": "user", "content": "求 12 × 12。"}, {"role": "assistant", "content": "144"}],
    "reasoning_content": "12 × 12 = 144。",
}
R1_INLINE = {"instruction": "法国的首都是哪里？", "output": r1("法国的首都是巴黎。", "巴黎")}
PROMPT_COMPLETION = {"prompt": "Q: 17 + 25 = ?", "completion": r1("17 + 25 = 42.", "42")}
OPENAI_THINK = {
    "messages": [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": r1("7 has no divisors but 1 and 7.", "Yes.")},
    ]
}


@pytest.mark.parametrize(
    ("row", "fmt", "prompt", "answer", "reasoning", "system"),
    [
        (ALPACA, "alpaca", "Give three tips for staying healthy.", ALPACA["output"], None, ""),
        (ALPACA_INPUT, "alpaca", "Translate the sentence into French.\n\nThe cat sleeps.", "Le chat dort.", None, ""),
        (SHAREGPT, "sharegpt", "And in Kelvin?", "373.15 K", "100 °C plus 273.15.", "You are a helpful assistant."),
        (OPENAI, "messages", "How many legs does a spider have?", "8", None, "Answer with a number."),
        (R1_FIELD, "messages", "求 12 × 12。", "144", "12 × 12 = 144。", ""),
        (R1_INLINE, "instruction_output", "法国的首都是哪里？", "巴黎", "法国的首都是巴黎。", ""),
        (PROMPT_COMPLETION, "prompt_completion", "Q: 17 + 25 = ?", "42", "17 + 25 = 42.", ""),
        (OPENAI_THINK, "messages", "Is 7 prime?", "Yes.", "7 has no divisors but 1 and 7.", ""),
    ],
)
def test_each_format_is_detected_and_normalized(row, fmt, prompt, answer, reasoning, system):
    assert detect_format(row) == fmt
    body = normalize(row)
    assert body["messages"][-2] == {"role": "user", "content": prompt}
    assert body["messages"][-1] == {"role": "assistant", "content": answer}
    assert (body["reasoning"], body["system"]) == (reasoning, system)
    check_schema(make_record(body, "f.jsonl", 1))


def test_sharegpt_multi_turn_keeps_earlier_answers():
    body = normalize(SHAREGPT)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user", "assistant"]
    assert body["messages"][1]["content"] == "100 °C (212 °F)."


ROWS = [ALPACA, ALPACA_INPUT, SHAREGPT, OPENAI, R1_FIELD, R1_INLINE, PROMPT_COMPLETION]


def _write_all(tmp_path):
    write_lines(tmp_path / "mixed.jsonl", ROWS)
    (tmp_path / "alpaca.json").write_text(json.dumps([ALPACA, ALPACA_INPUT, R1_INLINE], ensure_ascii=False), "utf-8")
    (tmp_path / "one.json").write_text(json.dumps(OPENAI), "utf-8")
    pd.DataFrame([ALPACA, ALPACA_INPUT, R1_INLINE]).to_csv(tmp_path / "alpaca.csv", index=False)
    pd.DataFrame([{"conversations": json.dumps(SHAREGPT["conversations"], ensure_ascii=False)}]).to_csv(
        tmp_path / "sharegpt.csv", index=False
    )
    pd.DataFrame(
        [
            SHAREGPT,
            {
                "conversations": OPENAI["messages"]
                and [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
            },
        ]
    ).to_parquet(tmp_path / "sg.parquet")
    pd.DataFrame([PROMPT_COMPLETION, {"prompt": "x", "completion": "y"}]).to_parquet(tmp_path / "pc.parquet")


@pytest.mark.parametrize(
    ("name", "n"),
    [
        ("mixed.jsonl", 7),
        ("alpaca.json", 3),
        ("one.json", 1),
        ("alpaca.csv", 3),
        ("sharegpt.csv", 1),
        ("sg.parquet", 2),
        ("pc.parquet", 2),
    ],
)
def test_every_container_is_read_without_rejections(tmp_path, name, n):
    _write_all(tmp_path)
    accepted, quarantined, report = validate_file(tmp_path / name, 10_000)
    assert (len(accepted), quarantined, report.rows) == (n, [], n)
    assert [r["source"]["line"] for r in accepted] == list(range(1, n + 1))


def test_unicode_round_trips_untouched(tmp_path):
    _write_all(tmp_path)
    for name in ("mixed.jsonl", "alpaca.json", "alpaca.csv"):
        accepted, _, _ = validate_file(tmp_path / name, 10_000)
        write_jsonl(tmp_path / "out.jsonl", accepted)
        back = read_jsonl(tmp_path / "out.jsonl")
        assert back == accepted
        assert "法国的首都是哪里？" in [m["content"] for r in back for m in r["messages"]]
    assert "法国的首都是哪里" in (tmp_path / "out.jsonl").read_text(encoding="utf-8")  # not \\u-escaped


def test_folder_glob_and_fsspec_urls(tmp_path):
    _write_all(tmp_path)
    roots = [str(tmp_path)]
    folder = expand_inputs(str(tmp_path), roots)
    assert [p.rsplit("/", 1)[-1] for p in folder] == sorted(
        ["mixed.jsonl", "alpaca.json", "one.json", "alpaca.csv", "sharegpt.csv", "sg.parquet", "pc.parquet"]
    )
    assert [p.rsplit("/", 1)[-1] for p in expand_inputs(str(tmp_path / "*.parquet"), roots)] == [
        "pc.parquet",
        "sg.parquet",
    ]
    url = f"file://{tmp_path}/mixed.jsonl"
    assert expand_inputs(url, roots) == [url]
    accepted, _, _ = validate_file(url, 10_000)
    assert len(accepted) == 7 and accepted[0]["source"]["file"] == url


def test_memory_filesystem_and_validate_over_a_glob(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    with fs.open("/bench/a.jsonl", "w") as handle:
        handle.write("\n".join(json.dumps(r, ensure_ascii=False) for r in ROWS) + "\n")
    with fs.open("/bench/b.json", "w") as handle:
        handle.write(json.dumps([ALPACA], ensure_ascii=False))
    assert expand_inputs("memory://bench/*", ["memory://"]) == ["memory:///bench/a.jsonl", "memory:///bench/b.json"]
    write_lines(tmp_path / "test.jsonl", [OPENAI])
    result = validate(
        DataConfig(
            train_paths=["memory://bench"],
            test_path=str(tmp_path / "test.jsonl"),
            replay_path=None,
            allowed_roots=["memory://", str(tmp_path)],
        ),
        tmp_path / "out",
    )
    assert [r.file for r in result.reports][:2] == ["memory:///bench/a.jsonl", "memory:///bench/b.json"]
    assert sum(1 for _ in open(result.train, encoding="utf-8")) == 8


def test_glob_without_match_and_missing_url_are_clear_errors(tmp_path):
    with pytest.raises(DataValidationError, match="no data file"):
        expand_inputs(str(tmp_path / "*.jsonl"), [str(tmp_path)])
    with pytest.raises(DataValidationError, match="file not found"):
        validate_file("memory://nowhere/x.jsonl", 100)


def test_lone_surrogate_is_invalid_utf8_and_quarantine_stays_writable(tmp_path):
    path = write_lines(
        tmp_path / "s.jsonl",
        ['{"instruction": "bad \\ud800 text", "output": "x"}', '{"messages": [{"role": "\\udc00", "content": "y"}]}'],
    )
    accepted, quarantined, _ = validate_file(path, 100)
    assert not accepted and [q["reason"] for q in quarantined] == ["invalid_utf8", "unknown_role"]
    write_jsonl(tmp_path / "q.jsonl", quarantined)  # must not raise UnicodeEncodeError


def test_csv_with_a_broken_turns_cell_is_quarantined(tmp_path):
    pd.DataFrame([{"messages": "[not json"}]).to_csv(tmp_path / "m.csv", index=False)
    _, quarantined, _ = validate_file(tmp_path / "m.csv", 100)
    assert quarantined[0]["reason"] == "wrong_type" and quarantined[0]["line"] == 1


def test_schema_rejects_what_normalize_should_never_produce():
    record = make_record(normalize(OPENAI), "f", 1)
    for broken in (
        {**record, "messages": record["messages"][:1]},
        {**record, "reasoning": " "},
        {**record, "messages": [{"role": "user", "content": ""}, record["messages"][1]]},
        {**record, "source": {"file": "f", "line": 0}},
    ):
        with pytest.raises(RecordError) as info:
            check_schema(broken)
        assert info.value.reason == "schema"
