"""CSV files: records cut where CsvScanner says they end (stretches of broken quoting as records of their own), then
rows under the header, with every line of the file accounted for."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from r1lib.data.csv_scan import QUOTED, CsvScanner, Stretch, broken_stretches, line_events
from r1lib.data.json_rows import DuplicateKey, loads_row
from r1lib.data.lines import BLANK, BOM, HEAD_BYTES, LineTooLong, dump_raw, head_of, iter_lines, raw_head, safe_text
from r1lib.errors import DataValidationError

# CSV cells are flat strings: turn lists serialized as JSON (ShareGPT/OpenAI turns) back into lists.
_NESTED_FIELDS = ("conversations", "messages")


class CsvDesync(csv.Error):
    """A line inside a stretch where the CSV quoting broke: from the record where a quote went astray to where the
    reading is sure of record boundaries again. Records and fragments cannot be told apart there, so every line of
    the stretch is quarantined on its own (reason ``csv_desync``)."""

    reason = "csv_desync"


@dataclass(frozen=True)
class CsvRecord:
    """One CSV record as the scanner cut it, or a stretch of broken quoting (``stretch``: its lines are read again,
    one by one): where it lies, its bytes (or a LineTooLong), its cell count, and where its quoting broke."""

    offset: int
    length: int
    first_line: int
    last_line: int
    data: bytes | LineTooLong | None
    problem: str | None
    spanning: tuple[int, int] | None
    stretch: bool = False


def iter_csv_records(handle: BinaryIO, max_bytes: int) -> Iterator[CsvRecord]:
    """The records of a CSV file (a seekable stream), cut where CsvScanner says they end (a newline in a quoted
    field does not end one). A record longer than ``max_bytes`` comes as a LineTooLong (streamed through a sha256,
    never held). A byte-order mark opening the file is skipped.

    One pass while the quoting holds, each record held back until the next one reads cleanly (a stray quote can cut
    the record before it short). At the first record whose quoting breaks, broken_stretches reads the rest of the
    file from the record held back, and the reading goes on from there with its stretches as records of their own
    (``stretch``), read again line by line."""
    if not handle.seekable():
        raise DataValidationError("a CSV file is read twice where its quoting breaks: open it seekable")
    base = len(BOM) if handle.read(len(BOM)) == BOM else 0
    start, first_line, width, stretches = base, 1, None, None
    while True:
        handle.seek(start)
        held: CsvRecord | None = None
        restart: CsvRecord | None = None
        for record, cells, quoted, content in _cut_records(handle, max_bytes, start, first_line, stretches):
            if width is None:
                if content:
                    width = cells  # the header
                yield record
                continue
            if stretches is None and quoted and (record.problem is not None or content and cells != width):
                restart = held or record
                break
            if held is not None:
                yield held
            held = record
        if restart is None:
            if held is not None:
                yield held
            return
        handle.seek(restart.offset)
        stretches = broken_stretches(handle, restart.offset, restart.first_line, width)
        start, first_line = restart.offset, restart.first_line


def _cut_records(
    handle: BinaryIO, max_bytes: int, start: int, first_line: int, stretches: list[Stretch] | None
) -> Iterator[tuple[CsvRecord, int, bool, bool]]:
    """(record, its cell count, whether it holds a quote, whether it is not blank) from byte ``start`` (line
    ``first_line``, the start of a record), with ``stretches`` (when known) as records of their own."""
    stretches = list(stretches or [])
    scanner = CsvScanner()
    pieces: list[bytes] = []
    size = column = 0
    offset = start
    line = first_line
    digest = None
    head = b""

    def record(last_line: int) -> tuple[CsvRecord, int, bool, bool]:
        data = LineTooLong(offset, size, digest.hexdigest(), head) if digest else b"".join(pieces)
        cut = CsvRecord(offset, size, first_line, last_line, data, scanner.problem, scanner.spanning)
        return cut, scanner.cells, scanner.has_quote, scanner.content

    events = line_events(handle, start)
    restart = True
    while restart:
        restart = False
        for piece, _ in events:
            if stretches and line == stretches[0].first_line and not size and not column and not pieces:
                stretch = stretches.pop(0)
                yield (
                    CsvRecord(
                        stretch.start,
                        stretch.end - stretch.start,
                        stretch.first_line,
                        stretch.last_line,
                        None,
                        stretch.problem,
                        None,
                        stretch=True,
                    ),
                    0,
                    True,
                    True,
                )
                line = first_line = stretch.last_line + 1
                offset = stretch.end + 1
                handle.seek(offset)
                events = line_events(handle, offset)
                scanner.reset()
                restart = True
                break
            if piece is not None:
                scanner.feed(piece, line, column + 1)
                column += len(piece)
            else:
                piece = b"\n" if not scanner.end_of_line() else None
                if piece is None:
                    yield record(line)
                    offset += size + 1
                    pieces, size, digest, head = [], 0, None, b""
                    scanner.reset()
                    first_line = line + 1
                line, column = line + 1, 0
                if piece is None:
                    continue
            size += len(piece)
            if digest is not None:
                digest.update(piece)
                if len(head) < HEAD_BYTES:
                    head += piece[: HEAD_BYTES - len(head)]
            elif size > max_bytes:
                pieces.append(piece)
                head = head_of(pieces)
                digest = hashlib.sha256()
                for held in pieces:
                    digest.update(held)
                pieces = []
            else:
                pieces.append(piece)
    if size or scanner.state == QUOTED:  # a last record without a newline, or a quote open at the end
        scanner.end_of_file()
        yield record(line if column else line - 1)


def _stretch_lines(handle: BinaryIO, record: CsvRecord, max_bytes: int) -> Iterator[tuple[int, str]]:
    """(line number, raw text) of each line of a stretch or of a held record across lines, read again from the file
    when it was not held; the stream is put back where it was."""
    if isinstance(record.data, bytes):
        data = record.data[:-1] if record.data.endswith(b"\n") else record.data  # open at the end of the file
        for k, text in enumerate(data.split(b"\n")):
            yield record.first_line + k, safe_text(text.decode("utf-8", errors="backslashreplace"))
        return
    resume = handle.tell()
    handle.seek(record.offset)
    end = record.offset + record.length
    for k, (offset, line) in enumerate(iter_lines(handle, max_bytes, base=record.offset)):
        if offset > end or record.first_line + k > record.last_line:
            break
        text = raw_head(line) if isinstance(line, LineTooLong) else line.decode("utf-8", errors="backslashreplace")
        yield record.first_line + k, safe_text(text)
    handle.seek(resume)


def _csv_row(header: list[str], values: list[str]) -> dict | DuplicateKey:
    row = {
        k: v
        for k, v in zip(header, values)
        if not (v == "" and k not in ("instruction", "output", "prompt", "completion"))
    }
    for key in _NESTED_FIELDS:
        if isinstance(row.get(key), str) and row[key].lstrip().startswith("["):
            parsed = loads_row(row[key])
            if isinstance(parsed, DuplicateKey):
                return parsed
            if not isinstance(parsed, json.JSONDecodeError):
                row[key] = parsed  # else left a string: normalize() quarantines it as wrong_type
    return row


def csv_rows(name: str, handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, str, object]]:
    """The rows of a CSV file (first record: the header) as iter_raw_rows yields them, numbered from 1.

    Nothing is lost and no fragment is taken for a record: a record whose cell count differs from the header's, or
    whose quoting breaks within its one line, is quarantined (invalid_csv); where the quoting breaks across lines
    (a stray quote that swallows the lines after it), every line of the stretch is quarantined on its own
    (csv_desync), so that accepted and quarantined rows and blank lines account for every line of the file."""
    # The stdlib's field limit (128 KiB) would refuse legal cells; a record is capped by iter_csv_records anyway.
    csv.field_size_limit(max(max_line_bytes, 131072))
    header: list[str] | None = None
    number = 0
    for record in iter_csv_records(handle, max_line_bytes):
        data, problem = record.data, record.problem
        if header is None:
            if isinstance(data, LineTooLong):
                raise DataValidationError(f"{name}: the CSV header is over data.max_line_bytes ({max_line_bytes})")
            if isinstance(data, bytes) and not data.strip():
                continue
            try:
                if problem or data is None:
                    raise csv.Error(problem)
                records = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
            except (UnicodeDecodeError, csv.Error) as exc:
                raise DataValidationError(f"{name}: unreadable CSV header ({exc})") from exc
            if len(records) > 1:  # the rows after it would be read as part of the header, and lost
                raise DataValidationError(
                    f"{name}: line {record.first_line} holds {len(records)} CSV records separated by bare carriage "
                    "returns (old Mac line ends); only \\n or \\r\\n end a record here: convert the line ends"
                )
            header = records[0] if records else []
            twice = sorted({k for k in header if header.count(k) > 1})
            if twice:
                raise DataValidationError(
                    f"{name}: the CSV header names the column(s) {twice} more than once, so which cell a row means "
                    "cannot be known: rename or drop the extra column"
                )
            continue
        one_line = record.first_line == record.last_line
        if isinstance(data, LineTooLong) and (problem is None or one_line):
            number += 1
            yield number, raw_head(data), data
            continue
        if isinstance(data, bytes) and not data.strip():
            yield number, "", BLANK
            continue
        if problem and one_line:  # the quoting breaks within one line: that record alone
            for _, raw in _stretch_lines(handle, record, max_line_bytes):
                number += 1
                yield number, raw, csv.Error(problem)
            continue
        if problem:
            stretch = f"lines {record.first_line}-{record.last_line}"
            for line, raw in _stretch_lines(handle, record, max_line_bytes):
                number += 1
                yield (
                    number,
                    raw,
                    CsvDesync(
                        f"line {line}, in {stretch} where the CSV quoting breaks ({problem}); records and fragments "
                        f"cannot be told apart there, so each line of {stretch} is quarantined: fix the quote (a quote "
                        'inside a quoted field is written "")'
                    ),
                )
            continue
        number += 1
        try:
            text = data.decode("utf-8")
            cells = list(csv.reader(io.StringIO(text, newline="")))
            if len(cells) != 1:
                raise csv.Error(f"{len(cells)} records where the quoting says one")
        except (UnicodeDecodeError, csv.Error) as exc:
            yield number, safe_text(data.decode("utf-8", errors="backslashreplace")), exc
            continue
        if len(cells[0]) != len(header):
            yield number, safe_text(text), csv.Error(f"{len(cells[0])} cells, the header has {len(header)}")
            continue
        row = _csv_row(header, cells[0])
        yield number, (safe_text(text) if isinstance(row, DuplicateKey) else dump_raw(row)), row
