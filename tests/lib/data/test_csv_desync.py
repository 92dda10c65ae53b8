"""A CSV whose quoting breaks loses no row and passes no fragment off as a record.

One stray quote at the start of a field opens a quoted field that swallows the lines after it, until some later quote
closes it. A reader that follows it blindly accepts fragments as records and lets real rows vanish inside a cell. The
reader cuts records by RFC 4180, notices where the quoting breaks (text after a closing quote, a wrong cell count, a
file that ends inside a quote) and quarantines every line of that stretch as ``csv_desync``, so that accepted +
quarantined rows account for every line of the file.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest

from tasks.validate import validate_file

HEADER = "instruction,output"


def good(k: int) -> str:
    return f"question {k},answer {k}"


def instructions(accepted: list[dict]) -> list[str]:
    return [r["messages"][0]["content"] for r in accepted]


def check_accounting(path: Path, accepted: list[dict], quarantined: list[dict], report) -> None:
    """Every row is either accepted or quarantined, and the counts match what the file holds."""
    assert report.rows == len(accepted) + len(quarantined)
    assert [q["line"] for q in quarantined] == sorted({q["line"] for q in quarantined})


def test_one_stray_quote_quarantines_its_stretch_and_keeps_every_row(tmp_path):
    lines = [HEADER] + [good(k) for k in range(1, 41)]
    lines.append('question 41,"answer 41 with a stray quote')  # line 42
    lines += [good(k) for k in range(42, 52)]  # lines 43-52: swallowed by the open quote
    lines.append('question 52,"a properly quoted, answer"')  # line 53: its opening quote closes the stray field
    lines += [good(k) for k in range(53, 63)]  # lines 54-63
    path = tmp_path / "stray.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    accepted, quarantined, report = validate_file(path, 10_000)

    assert instructions(accepted) == [f"question {k}" for k in [*range(1, 41), *range(53, 63)]]
    answers = [r["messages"][1]["content"] for r in accepted]
    assert answers == [q.replace("question", "answer") for q in instructions(accepted)]
    assert [q["reason"] for q in quarantined] == ["csv_desync"] * 12
    assert [q["raw"] for q in quarantined] == lines[41:53]  # the stretch, line by line, as the file holds it
    first = quarantined[0]["message"]
    assert "lines 42-53" in first and "opened at line 42, column 13" in first and "closes at line 53" in first
    assert report.rows == 62 == len(lines) - 1 == len(accepted) + len(quarantined)
    assert report.reasons == {"csv_desync": 12}
    check_accounting(path, accepted, quarantined, report)


def test_a_quote_never_closed_quarantines_to_the_end_of_the_file(tmp_path):
    lines = [HEADER, good(1), good(2), 'question 3,"never closed', good(4), good(5)]
    path = tmp_path / "open.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    accepted, quarantined, report = validate_file(path, 10_000)
    assert instructions(accepted) == ["question 1", "question 2"]
    assert [(q["reason"], q["raw"]) for q in quarantined] == [("csv_desync", line) for line in lines[3:]]
    assert "never closed (the file ends inside it)" in quarantined[0]["message"]
    assert "lines 4-6" in quarantined[0]["message"]
    assert report.rows == 5


def test_a_stray_quote_in_a_crlf_file_with_multiline_cells(tmp_path):
    """Real CSV writers: CRLF line ends, a legal cell across lines; the stray quote's stretch ends at the first
    quoted cell after it, and the legal multi-line cell before it is one record."""
    rows = [
        ("q1", "a1"),
        ("q2", "first line\r\nsecond line, with a comma"),
        ("q3", 'she said "hi"'),
    ]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["instruction", "output"])
    writer.writerows(rows)
    text = buffer.getvalue() + 'q4,"stray\r\nq5,a5\r\n' + buffer.getvalue().split("\r\n", 1)[1]
    path = tmp_path / "crlf.csv"
    path.write_bytes(text.encode("utf-8"))
    accepted, quarantined, report = validate_file(path, 10_000)
    # q4's stretch runs to the repeated q2 row, whose opening quote closed the stray field: both readings of it (the
    # quote closed the field; the quote was text) end a record with its second line.
    assert instructions(accepted) == ["q1", "q2", "q3", "q3"]
    assert accepted[1]["messages"][1]["content"] == "first line\r\nsecond line, with a comma"
    assert [q["reason"] for q in quarantined] == ["csv_desync"] * 5
    assert [q["raw"].rstrip("\r") for q in quarantined] == [
        'q4,"stray',
        "q5,a5",
        "q1,a1",
        'q2,"first line',
        'second line, with a comma"',
    ]
    assert report.rows == 9


def test_a_quote_inside_an_unquoted_field_is_text_not_a_desync(tmp_path):
    path = tmp_path / "inch.csv"
    path.write_text(HEADER + '\nthe 5" screen,fine\n' + good(2) + "\n" + good(3) + "\n", encoding="utf-8")
    accepted, quarantined, report = validate_file(path, 10_000)
    assert instructions(accepted) == ['the 5" screen', "question 2", "question 3"] and quarantined == []


def test_single_line_faults_stay_single_rows(tmp_path):
    path = tmp_path / "faults.csv"
    path.write_text(
        HEADER + '\nq1,"quoted"then text\nq2\nq3,a3,extra\n' + good(4) + "\n",
        encoding="utf-8",
    )
    accepted, quarantined, report = validate_file(path, 10_000)
    assert instructions(accepted) == ["question 4"]
    assert [(q["line"], q["reason"]) for q in quarantined] == [(k, "invalid_csv") for k in (1, 2, 3)]
    assert "closes at line 2, column 11, and text follows the closing quote" in quarantined[0]["message"]
    assert "1 cells, the header has 2" in quarantined[1]["message"]
    assert "3 cells, the header has 2" in quarantined[2]["message"]


def test_a_stretch_over_the_line_cap_is_reread_line_by_line(tmp_path):
    lines = [HEADER, good(1), 'q2,"stray'] + [good(k) for k in range(3, 3000)] + ['q3000,"x"', good(3001)]
    path = tmp_path / "long.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    accepted, quarantined, report = validate_file(path, 10_000, max_line_bytes=4096)
    assert instructions(accepted) == ["question 1", "question 3001"]
    assert [q["raw"] for q in quarantined] == lines[2:-1]
    assert {q["reason"] for q in quarantined} == {"csv_desync"}
    assert report.rows == len(lines) - 1


def test_a_stray_quote_in_the_header_fails_naming_the_file(tmp_path):
    from r1lib.errors import DataValidationError

    path = tmp_path / "header.csv"
    path.write_text('instruction,"output\n' + good(1) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"header\.csv: unreadable CSV header \(the quoted field opened"):
        validate_file(path, 10_000)


def fuzz_file(rng: random.Random, n_rows: int) -> tuple[list[str], list[tuple[str, str]]]:
    """csv.writer output, as one text chunk per record (the header first), and the rows it holds."""
    words = ["alpha", "beta, gamma", 'say "hi"', "two\nlines", "x", "", "逗号，中文", '"q"', "end,"]
    rows = [(f"q{k} {rng.choice(words)}".strip(), f"a{k} {rng.choice(words)}".strip()) for k in range(n_rows)]
    terminator = rng.choice(["\n", "\r\n"])
    chunks = []
    for row in [("instruction", "output"), *rows]:
        buffer = io.StringIO(newline="")
        csv.writer(buffer, lineterminator=terminator).writerow(row)
        chunks.append(buffer.getvalue())
    return chunks, rows


def unquoted(q: str, a: str) -> str:
    return (q + "|" + a).replace('"', "").replace("\r", "")


@pytest.mark.parametrize("seed", range(200))
def test_one_random_stray_quote_never_passes_a_fragment_off_as_a_row(tmp_path, seed):
    """csv.writer output with one quote inserted at a random place: every accepted row is a row of the original
    file, or the row the quote landed in (changed by it), never a fragment; every other row is accepted as it was
    or its line is in the quarantine; the counts add up."""
    rng = random.Random(seed)
    chunks, rows = fuzz_file(rng, 30)
    at = rng.randrange(len(chunks[0]), sum(map(len, chunks)))
    ends = [sum(map(len, chunks[: k + 1])) for k in range(len(chunks))]
    touched = next(k for k in range(1, len(chunks)) if at < ends[k]) - 1  # the row the quote lands in
    text = "".join(chunks)
    path = tmp_path / "fuzz.csv"
    path.write_bytes((text[:at] + '"' + text[at:]).encode("utf-8"))

    accepted, quarantined, report = validate_file(path, 10_000)

    got = [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in accepted]
    changed = [g for g in got if g not in rows]
    assert len(changed) <= 1, changed
    if changed:
        assert unquoted(*changed[0]) == unquoted(*rows[touched]), (changed, rows[touched])
    raws = "\n".join(q["raw"] for q in quarantined)
    for k, row in enumerate(rows):
        if k != touched and row not in got:
            first_line = chunks[k + 1].split("\n")[0].rstrip("\r")
            assert first_line in raws, (k, row, first_line, raws[:1000])
    if not changed and rows[touched] not in got:
        assert quarantined, "the row the quote landed in vanished"
    assert report.rows == len(accepted) + len(quarantined)
    assert len(accepted) <= len(rows)
