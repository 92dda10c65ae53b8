import json

import pytest
from conftest import r1, write_lines

from r1lib.config import DataConfig
from r1lib.errors import DataValidationError
from tasks.validate import validate, validate_file

BROKEN = "data/sample/broken.jsonl"


def test_broken_file_loses_no_row_and_gives_every_rejection_a_reason():
    from pathlib import Path

    accepted, quarantined, report = validate_file(Path(BROKEN), max_chars=100_000)
    lines = [line for line in open(BROKEN, encoding="utf-8") if line.strip()]
    assert len(accepted) + len(quarantined) == len(lines) == report.rows
    assert len(accepted) == 2
    assert all(q["reason"] and q["message"].startswith(f"{BROKEN}:{q['line']}:") for q in quarantined)
    assert {q["reason"] for q in quarantined} >= {
        "invalid_json",
        "missing_field",
        "empty_field",
        "wrong_type",
        "not_an_object",
        "unclosed_think",
        "empty_reasoning",
        "control_character",
    }
    for q in quarantined:  # the raw text is kept, so nothing is lost
        assert q["raw"] == lines[q["line"] - 1].rstrip("\n")


def test_quarantine_file_names_file_line_and_field(tmp_path):
    result = validate(DataConfig(train_paths=["data/sample/train.jsonl", BROKEN]), tmp_path)
    rows = [json.loads(line) for line in open(result.quarantine, encoding="utf-8")]
    missing = next(r for r in rows if r["reason"] == "missing_field")
    assert (missing["file"], missing["line"], missing["field"]) == (BROKEN, 3, "output")
    train_rows = sum(1 for _ in open(result.train, encoding="utf-8"))
    assert train_rows + len(rows) == sum(
        r.rows for r in result.reports if r.file != "data/sample/test.jsonl" and r.file != "data/sample/general.jsonl"
    )


def test_too_many_rejections_fail_with_a_clear_message(tmp_path):
    with pytest.raises(
        DataValidationError, match=r"train data: 12 of 14 rows rejected .*broken.jsonl:2: not valid JSON"
    ):
        validate(DataConfig(train_paths=[BROKEN]), tmp_path)


def test_invalid_utf8_line_is_quarantined_not_crashing(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(
        json.dumps({"instruction": "ok", "output": "fine"}).encode()
        + b"\n"
        + b'{"instruction": "\xff\xfe", "output": "x"}\n'
    )
    accepted, quarantined, _ = validate_file(path, 1000)
    assert len(accepted) == 1 and quarantined[0]["reason"] == "invalid_utf8" and quarantined[0]["line"] == 2


def test_json_csv_and_parquet_inputs(tmp_path):
    import pandas as pd

    rows = [
        {"instruction": "最大的数字是？ 3, 9", "output": r1("9 比 3 大。", "9")},
        {"instruction": "Hi", "output": "Hello"},
    ]
    (tmp_path / "a.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    pd.DataFrame(rows).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame(rows).to_parquet(tmp_path / "a.parquet")
    for name in ("a.json", "a.csv", "a.parquet"):
        accepted, quarantined, _ = validate_file(tmp_path / name, 1000)
        assert not quarantined
        assert accepted[0]["messages"][0]["content"] == "最大的数字是？ 3, 9"  # Unicode untouched
        assert accepted[0]["reasoning"] == "9 比 3 大。"


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataValidationError, match="nope.jsonl: file not found"):
        validate(DataConfig(train_paths=[str(tmp_path / "nope.jsonl")], allowed_roots=[".", str(tmp_path)]), tmp_path)


def test_blank_lines_are_counted_not_quarantined(tmp_path):
    path = write_lines(tmp_path / "b.jsonl", [{"instruction": "a", "output": "b"}, "", "   "])
    accepted, quarantined, report = validate_file(path, 100)
    assert (len(accepted), len(quarantined), report.blank_lines) == (1, 0, 2)


def test_a_field_of_only_invisible_characters_is_empty(tmp_path):
    # bench/attack5 finding 7: an answer of a zero-width space was trained as an answer
    rows = [{"question": "q\u034f", "answer": "\u200b"}, {"instruction": "Hi?", "output": "\u3164\ufe0f"},
            {"instruction": "\u200b\u2060", "output": "x"}, {"instruction": "Hi?", "output": r1("\u200b", "Hello.")},
            {"instruction": "Hi?", "output": r1("Greet.", "\u034f")},
            {"instruction": "Hi?", "output": "Hello\u200b."}]  # fmt: skip
    accepted, quarantined, report = validate_file(write_lines(tmp_path / "rows.jsonl", rows), max_chars=100_000)
    assert len(accepted) + len(quarantined) == report.rows == 6
    assert [(q["line"], q["reason"], q["field"]) for q in quarantined] == [
        (1, "empty_field", "answer"), (2, "empty_field", "output"), (3, "empty_field", "instruction"),
        (4, "empty_reasoning", "output"), (5, "empty_answer", "output"),
    ]  # fmt: skip
    assert "only invisible characters" in quarantined[0]["message"]
    assert accepted[0]["messages"][-1]["content"] == "Hello\u200b."  # text around it is kept as written


NAMED = {"utf-16": "UTF-16 LE (byte order mark FF FE)", "utf-16-le": "UTF-16 LE (no byte order mark",
         "utf-16-be": "UTF-16 BE (no byte order mark", "utf-32": "UTF-32 LE (byte order mark FF FE 00 00)",
         "utf-32-be": "UTF-32 BE (no byte order mark"}  # fmt: skip


@pytest.mark.parametrize("encoding", sorted(NAMED))
@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "txt"])
def test_a_utf16_or_utf32_file_is_refused_once_naming_its_encoding(tmp_path, encoding, suffix):
    # bench/attack5 finding 15: read as 1 invalid_utf8 and N invalid_json rows, with no word of the encoding
    text = {"jsonl": '{"instruction": "Hi?", "output": "Hello."}\n' * 5,
            "json": '[{"instruction": "Hi?", "output": "Hello."}]',
            "csv": "instruction,output\nHi?,Hello.\n", "txt": "Some text.\n\nMore text.\n"}[suffix]  # fmt: skip
    path = tmp_path / f"rows.{suffix}"
    path.write_bytes(text.encode(encoding))
    with pytest.raises(DataValidationError) as info:
        validate_file(path, max_chars=100_000)
    message = str(info.value)
    assert message.startswith(f"{path}: the file is {NAMED[encoding]}") and "re-save it as UTF-8" in message, message
    path.write_bytes(text.encode("utf-8-sig"))  # the same rows in UTF-8 (with its BOM) are read as rows
    accepted, quarantined, report = validate_file(path, max_chars=100_000)
    reasons = {q["reason"] for q in quarantined}
    assert (len(accepted), reasons) == ((0, {"pretraining_text"}) if suffix == "txt" else (report.rows, set()))


def test_the_report_table_names_files_under_their_shared_folder_so_a_long_path_fits_the_page():
    from tasks.validate import FileReport, report_table

    deep = "/home/someone/projects/a-rather-long-project-name/data/2026-12-07-nightly"
    reports = [
        FileReport(file=f"{deep}/{name}", rows=3, accepted=2, quarantined=1, blank_lines=0, reasons={"x": 1})
        for name in ("train.jsonl", "more/test.jsonl")
    ]
    rows, folder = report_table(reports)
    assert folder == deep and [r["file"] for r in rows] == ["train.jsonl", "more/test.jsonl"]
    assert rows[0]["reasons"] == '{"x": 1}' and rows[0]["quarantined"] == 1
    relative = FileReport(file="relative.jsonl", rows=1, accepted=1, quarantined=0, blank_lines=0, reasons={})
    mixed = [reports[0], relative]
    rows, folder = report_table(mixed)  # nothing shared: the paths stay as given
    assert folder is None and [r["file"] for r in rows] == [reports[0].file, "relative.jsonl"]
    # Named as given: a URL keeps its "//" (no folder), a ".." stays in the name (it may cross a symbolic link).
    urls = [
        FileReport(file=f"s3://bucket/a/{n}", rows=1, accepted=1, quarantined=0, blank_lines=0, reasons={})
        for n in "xy"
    ]
    assert report_table(urls)[1] is None and [r["file"] for r in report_table(urls)[0]] == [u.file for u in urls]
    dotted = [
        FileReport(file=f, rows=1, accepted=1, quarantined=0, blank_lines=0, reasons={})
        for f in ("/d/l/../x", "/d/z/y")
    ]
    rows, folder = report_table(dotted)
    assert [f"{folder}/{r['file']}" for r in rows] == ["/d/l/../x", "/d/z/y"]
