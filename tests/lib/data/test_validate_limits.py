"""Bounded reading: a line (a CSV record, a .json file) over data.max_line_bytes is never held in memory."""

import hashlib
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r1lib.data.lines import LineTooLong, iter_lines
from r1lib.errors import DataValidationError
from tasks.validate import validate_file
from tests.conftest import ROOT

GOOD = json.dumps({"instruction": "What is the sentence about?", "output": "<think>\nAnimals.\n</think>\n\nAnimals."})


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    cap=st.integers(1, 30),
    block=st.integers(1, 17),
    final_newline=st.booleans(),
)
def test_iter_lines_splits_like_bytes_split_at_any_read_size(lines, cap, block, final_newline):
    import io

    class Trickle(io.BytesIO):  # short reads, as from a network stream: lines straddle every boundary
        def read(self, size=-1):
            return super().read(min(size, block))

    data = b"\n".join(lines) + (b"\n" if final_newline and lines else b"")
    expected, offset = [], 0
    for i, line in enumerate(lines):
        if line or final_newline or i < len(lines) - 1:  # an empty last line without its newline is no line
            expected.append(
                (
                    offset,
                    line
                    if len(line) <= cap
                    else LineTooLong(offset, len(line), hashlib.sha256(line).hexdigest(), line[:200]),
                )
            )
        offset += len(line) + 1
    assert list(iter_lines(Trickle(data), cap)) == expected


def test_long_line_is_quarantined_with_offset_length_and_hash(tmp_path):
    long_line = b'{"instruction": "' + b"y" * 3_000_000 + b'", "output": "z"}'
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join([GOOD.encode(), long_line, b"", GOOD.encode(), long_line[:1024]]) + b"\n")
    accepted, quarantined, report = validate_file(path, 10_000_000, max_line_bytes=2**20)
    assert len(accepted) == 2 and report.rows == 4 and report.blank_lines == 1
    too_long, truncated = quarantined
    assert (too_long["reason"], too_long["line"], too_long["offset"], too_long["bytes"]) == (
        "line_too_long",
        2,
        len(GOOD) + 1,
        len(long_line),
    )
    assert too_long["sha256"] == hashlib.sha256(long_line).hexdigest()
    assert too_long["raw"].startswith('{"instruction": "yyy') and len(too_long["raw"]) < 300
    assert too_long["message"].startswith(f"{path}:2: {len(long_line)} bytes from byte {len(GOOD) + 1}")
    assert truncated["reason"] == "invalid_json"  # under the cap: parsed as usual

    exact = validate_file(path, 10_000_000, max_line_bytes=len(long_line))  # the cap itself is allowed
    assert [q["reason"] for q in exact[1]] == ["invalid_json"] and len(exact[0]) == 3


def test_csv_record_over_the_cap_is_quarantined_and_large_cells_under_it_are_read(tmp_path):
    rows = [
        {"instruction": "Hi", "output": "Hello"},
        {"instruction": "Long", "output": "line one\n" + "x" * 300_000},  # over the stdlib's 128 KiB field limit
        {"instruction": "Huge", "output": "many\nlines\n" * 100_000},  # 1.1 MB over 200,000 lines
        {"instruction": "After", "output": "Fine"},
    ]
    path = tmp_path / "a.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    with open(path, "ab") as handle:
        handle.write(b'one,two,three,four\n"' + b"q" * 600_000 + b'",x\n')  # too many cells; one line too long
    accepted, quarantined, report = validate_file(path, 1_000_000, max_line_bytes=500_000)
    assert [r["messages"][0]["content"] for r in accepted] == ["Hi", "Long", "After"]
    assert len(accepted[1]["messages"][1]["content"]) == 300_009
    assert [(q["line"], q["reason"]) for q in quarantined] == [
        (3, "line_too_long"),
        (5, "invalid_csv"),
        (6, "line_too_long"),
    ]
    huge = quarantined[0]
    data = path.read_bytes()
    assert data[huge["offset"] : huge["offset"] + huge["bytes"]].startswith(b"Huge,")
    assert huge["sha256"] == hashlib.sha256(data[huge["offset"] : huge["offset"] + huge["bytes"]]).hexdigest()
    assert report.rows == 6 == len(accepted) + len(quarantined)


def test_json_file_over_the_cap_fails_naming_the_file_and_jsonl(tmp_path):
    path = tmp_path / "big.json"
    path.write_text(json.dumps([json.loads(GOOD)] * 1000))
    assert len(validate_file(path, 10_000)[0]) == 1000
    with pytest.raises(DataValidationError, match=r"big\.json: a \.json file is read whole.*JSON lines \(\.jsonl"):
        validate_file(path, 10_000, max_line_bytes=10_000)


CHILD = """
import json, sys
from tasks.validate import validate_file
accepted, quarantined, report = validate_file(sys.argv[1], 100_000)  # the default max_line_bytes, 64 MiB
# VmHWM: the peak RSS of this program since its exec. (ru_maxrss would start at the forking parent's size, which in a
# long pytest session is gigabytes.)
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
json.dump({"accepted": len(accepted), "quarantined": quarantined, "rows": report.rows, "peak_kib": peak_kib},
          open(sys.argv[2], "w"))
"""


@pytest.mark.slow
def test_a_1_gb_line_streams_through_a_child_process_in_bounded_memory(tmp_path):
    path, chunk = tmp_path / "huge.jsonl", b"x" * 64 * 2**20
    start, end = b'{"instruction": "', b'", "output": "y"}'
    digest = hashlib.sha256(start)
    began = time.monotonic()
    with open(path, "wb") as handle:
        handle.write(GOOD.encode() + b"\n" + start)
        for _ in range(16):  # 1 GiB of text in one line
            handle.write(chunk)
            digest.update(chunk)
        handle.write(end + b"\n" + GOOD.encode() + b"\n")
    digest.update(end)
    length = len(start) + 16 * len(chunk) + len(end)
    del chunk
    written = time.monotonic() - began

    out = tmp_path / "result.json"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(out)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    child.wait()
    assert child.returncode == 0
    result = json.loads(out.read_text())
    peak_mib = result["peak_kib"] / 1024
    print(
        f"1 GiB line: written in {written:.1f} s, validated in {time.monotonic() - began - written:.1f} s, "
        f"child peak RSS {peak_mib:.0f} MiB"
    )
    assert result["accepted"] == 2 and result["rows"] == 3
    (row,) = result["quarantined"]
    assert (row["reason"], row["line"], row["offset"], row["bytes"]) == ("line_too_long", 2, len(GOOD) + 1, length)
    assert row["sha256"] == digest.hexdigest()
    assert peak_mib < 400, f"the child held {peak_mib:.0f} MiB for a 1 GiB line"
