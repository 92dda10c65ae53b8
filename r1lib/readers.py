"""Reading data files row by row, whatever they hold, in bounded memory.

Files are JSON lines, JSON (one object or an array; JSON lines in a file named .json too), CSV, Parquet or plain text
(.txt: one row per paragraph, {"text": ...}), local or any fsspec URL. JSON lines and CSV
records are read in blocks, and one longer than ``data.max_line_bytes`` is never held: it streams through a sha256 to
its end and comes back as a ``LineTooLong``. A .json file, read whole, may not exceed the same cap. Each row comes
back with its number and raw text, parsed or with the exception that parsing raised, so the caller can quarantine it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from r1lib.config import DataConfig
from r1lib.errors import DataValidationError
from r1lib.paths import confine, resolve_roots

BLANK = object()  # what iter_raw_rows yields for a blank line (a JSON ``null`` row is None, and is quarantined)
SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
_GLOB_CHARS = "*?["
# CSV cells are flat strings: turn lists serialized as JSON (ShareGPT/OpenAI turns) back into lists.
_NESTED_FIELDS = ("conversations", "messages")
_BOM = b"\xef\xbb\xbf"
_BLOCK = 1 << 20  # bytes read at a time
_HEAD = 200  # bytes of an over-long line kept in the quarantine, to recognize it by
MAX_LINE_BYTES = DataConfig.model_fields["max_line_bytes"].default
DATA_ROOTS = DataConfig.model_fields["allowed_roots"].default
ROOTS_FIELD = "data.allowed_roots"


def safe_text(text: str) -> str:
    """Text that can be written as UTF-8 (lone surrogates become backslash escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _dump_raw(row: object) -> str:
    try:
        return safe_text(json.dumps(row, ensure_ascii=False, default=str))
    except (RecursionError, ValueError):
        return safe_text(repr(row)[:10_000])


def _loads(text: str) -> object:
    """json.loads, with nesting too deep for the parser reported as a JSON error instead of a crash."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        return exc
    except RecursionError:
        return json.JSONDecodeError("nested too deeply", text, 0)


def expand_inputs(spec: str | Path, allowed_roots: Sequence[str] = DATA_ROOTS) -> list[str]:
    """One input spec -> its files: a file, a folder (its data files, recursively, sorted) or a glob; local paths or
    any fsspec URL (``file://``, ``memory://``, ``s3://`` ...). A plain existing file is returned exactly as given.
    The spec (before anything is opened) and every file found must lie under ``allowed_roots``."""
    from fsspec.core import url_to_fs

    spec = str(spec)
    roots = resolve_roots(allowed_roots)
    confine(spec, roots, ROOTS_FIELD)
    fs, root = url_to_fs(spec)
    remote = "://" in spec
    if any(c in spec for c in _GLOB_CHARS):
        found = sorted(fs.glob(root))
    elif fs.isdir(root):
        found = sorted(p for p in fs.find(root) if p.lower().endswith(SUFFIXES))
    else:
        return [spec]
    files = [p for p in found if p.lower().endswith(SUFFIXES) and not fs.isdir(p)]
    if not files:
        raise DataValidationError(f"{spec}: no data file ({', '.join(SUFFIXES)}) matches")
    # A folder or glob may hold symlinks that lead out of the roots: each file is checked as itself.
    return [confine(fs.unstrip_protocol(p) if remote else p, roots, ROOTS_FIELD) for p in files]


def path_exists(path: str) -> bool:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(path)
    return fs.exists(root)


@dataclass(frozen=True)
class LineTooLong:
    """A line (a CSV record) over ``data.max_line_bytes``: streamed through a sha256, never held in memory."""

    offset: int  # of its first byte in the file
    length: int  # in bytes, without its newline
    sha256: str
    head: bytes  # its first bytes


def _head(pieces: list[bytes]) -> bytes:
    return b"".join(p[:_HEAD] for p in pieces[:_HEAD])[:_HEAD]


def iter_lines(handle: BinaryIO, max_bytes: int, quoted: bool = False) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """(byte offset, bytes without the newline) of each line of a binary stream; with ``quoted`` (CSV) a newline
    inside double quotes does not end the record. One longer than ``max_bytes`` comes as a LineTooLong: it streams
    through a sha256 to its end, so memory stays near ``max_bytes`` + one block whatever the file holds."""
    pieces: list[bytes] = []
    size = quotes = offset = 0
    digest = None
    head = b""
    while block := handle.read(_BLOCK):
        start = 0
        while True:
            newline = block.find(b"\n", start)
            piece = block[start:] if newline < 0 else block[start:newline]
            if quoted:
                quotes += piece.count(b'"')  # a doubled quote inside a quoted field counts twice: parity holds
            ends = newline >= 0 and not quotes % 2
            if newline >= 0 and not ends:
                piece += b"\n"  # a newline inside a quoted CSV field is part of the record
            size += len(piece)
            if digest is not None:
                digest.update(piece)
                if len(head) < _HEAD:  # a cap below _HEAD: the head goes on past it
                    head += piece[: _HEAD - len(head)]
            elif size > max_bytes:  # from here on the line is hashed and dropped, not kept
                pieces.append(piece)
                head = _head(pieces)
                digest = hashlib.sha256()
                for held in pieces:
                    digest.update(held)
                pieces = []
            else:
                pieces.append(piece)
            if newline < 0:
                break
            start = newline + 1
            if ends:
                yield offset, (LineTooLong(offset, size, digest.hexdigest(), head) if digest else b"".join(pieces))
                offset += size + 1
                pieces, size, quotes, digest = [], 0, 0, None
    if size:  # a last line without a newline
        yield offset, (LineTooLong(offset, size, digest.hexdigest(), head) if digest else b"".join(pieces))


def _raw_head(line: LineTooLong) -> str:
    return safe_text(line.head.decode("utf-8", errors="backslashreplace")) + f"... ({line.length} bytes)"


def _csv_rows(name: str, handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, str, object]]:
    """The rows of a CSV file (first record: the header) as iter_raw_rows yields them, numbered from 1."""
    # The stdlib's field limit (128 KiB) would refuse legal cells; a record is capped by iter_lines anyway.
    csv.field_size_limit(max_line_bytes)
    header: list[str] | None = None
    number = 0
    for offset, record in iter_lines(handle, max_line_bytes, quoted=True):
        if isinstance(record, LineTooLong):
            if header is None:
                raise DataValidationError(f"{name}: the CSV header is over data.max_line_bytes ({max_line_bytes})")
            number += 1
            yield number, _raw_head(record), record
            continue
        if offset == 0 and record.startswith(_BOM):
            record = record[len(_BOM) :]
        if not record.strip():
            if header is not None:
                yield number, "", BLANK
            continue
        try:
            text = record.decode("utf-8")
            cells = list(csv.reader(io.StringIO(text, newline="")))
        except (UnicodeDecodeError, csv.Error) as exc:
            if header is None:
                raise DataValidationError(f"{name}: unreadable CSV header ({exc})") from exc
            number += 1
            yield number, safe_text(record.decode("utf-8", errors="backslashreplace")), exc
            continue
        if header is None:
            header, cells = cells[0], cells[1:]
        for values in cells:  # one record, or several where a stray quote made iter_lines join lines
            if not values:
                yield number, "", BLANK
                continue
            number += 1
            if len(values) > len(header):
                yield number, safe_text(text), csv.Error(f"{len(values)} cells, the header has {len(header)}")
                continue
            row = {
                k: v
                for k, v in zip(header, values)
                if not (v == "" and k not in ("instruction", "output", "prompt", "completion"))
            }
            for key in _NESTED_FIELDS:
                if isinstance(row.get(key), str) and row[key].lstrip().startswith("["):
                    parsed = _loads(row[key])
                    if not isinstance(parsed, json.JSONDecodeError):
                        row[key] = parsed  # else left a string: normalize() quarantines it as wrong_type
            yield number, _dump_raw(row), row


def _text_rows(handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, str, object]]:
    """The paragraphs of a plain-text file (blank lines between them) as rows ``{"text": paragraph}``, numbered by
    their first line. A paragraph over ``max_line_bytes`` is cut at line ends into several rows; one line over it
    is a LineTooLong, as in JSON lines. Lines that look like JSON are text here: a .txt file is read as text."""
    first, held, size = 0, [], 0

    def row() -> tuple[int, str, object]:
        raw = b"\n".join(held)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return first, raw.decode("utf-8", errors="backslashreplace"), exc
        return first, text, {"text": text}

    for number, (offset, line) in enumerate(iter_lines(handle, max_line_bytes), start=1):
        if isinstance(line, LineTooLong):
            if held:
                yield row()
            held, size = [], 0
            yield number, _raw_head(line), line
            continue
        if offset == 0 and line.startswith(_BOM):
            line = line[len(_BOM) :]
        line = line.removesuffix(b"\r")
        if not line.strip():
            if held:
                yield row()
            held, size = [], 0
            continue
        if held and size + len(line) + 1 > max_line_bytes:
            yield row()
            held, size = [], 0
        if not held:
            first = number
        held.append(line)
        size += len(line) + (len(held) > 1)
    if held:
        yield row()


def _json_rows(name: str, blob: bytes) -> Iterator[tuple[int, str, object]]:
    """The rows of a .json file read whole: one object, an array of rows (numbered from 1), or, where the file holds
    JSON lines under a .json name (a common mix-up), its lines."""
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield 1, blob.decode("utf-8", errors="backslashreplace"), exc
        return
    data = _loads(text)
    if isinstance(data, json.JSONDecodeError):
        first = text.lstrip().split("\n", 1)[0]
        if data.msg == "Extra data" and isinstance(_loads(first), dict):
            lines = text.split("\n")
            for number, line in enumerate(lines[:-1] if not lines[-1].strip() else lines, start=1):
                yield number, line, (_loads(line) if line.strip() else BLANK)
            return
        yield 1, text, data
        return
    rows = data if isinstance(data, list) else [data]
    for number, row in enumerate(rows, start=1):
        yield number, _dump_raw(row), row


def iter_raw_rows(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str, object]]:
    """Yield (line or row number, raw text, parsed value or the exception that parsing raised, a LineTooLong, or
    BLANK), 1-based.

    Streams: JSON lines and CSV records in blocks (bounded by ``max_line_bytes``), Parquet in batches; a .json file
    (one object or an array) is read whole, up to ``max_line_bytes``. ``path`` may be any fsspec URL.
    """
    import fsspec

    name = str(path)
    suffix = Path(name.split("?")[0]).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with fsspec.open(name, "rb") as handle:
            for number, (offset, raw) in enumerate(iter_lines(handle, max_line_bytes), start=1):
                if isinstance(raw, LineTooLong):
                    yield number, _raw_head(raw), raw
                    continue
                if offset == 0 and raw.startswith(_BOM):
                    raw = raw[len(_BOM) :]  # a byte-order mark opens the file; it is not part of the first row
                if not raw.strip():  # blank: ASCII whitespace only (a line of control characters is a bad row)
                    yield number, raw.decode("utf-8", errors="backslashreplace"), BLANK
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield number, raw.decode("utf-8", errors="backslashreplace"), exc
                    continue
                yield number, text, _loads(text)
    elif suffix == ".json":
        with fsspec.open(name, "rb") as handle:
            blob = handle.read(max_line_bytes + 1)
        if len(blob) > max_line_bytes:
            raise DataValidationError(
                f"{name}: a .json file is read whole, and this one is over data.max_line_bytes ({max_line_bytes} "
                "bytes); convert it to JSON lines (.jsonl, one row per line), which is streamed"
            )
        yield from _json_rows(name, blob)
    elif suffix == ".csv":
        with fsspec.open(name, "rb") as handle:
            yield from _csv_rows(name, handle, max_line_bytes)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        with fsspec.open(name, "rb") as handle:
            number = 0
            for batch in pq.ParquetFile(handle).iter_batches(batch_size=8192):
                for row in batch.to_pylist():
                    number += 1
                    row = {k: v for k, v in row.items() if v is not None}  # absent columns of a mixed file
                    yield number, _dump_raw(row), row
    elif suffix == ".txt":
        with fsspec.open(name, "rb") as handle:
            yield from _text_rows(handle, max_line_bytes)
    else:
        raise DataValidationError(
            f"{name}: unsupported file type {suffix!r} (use .jsonl, .json, .csv, .parquet, or .txt for plain text)"
        )
