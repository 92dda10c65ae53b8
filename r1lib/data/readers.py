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
from r1lib.paths import confine, is_url, open_confined, resolve_roots

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


class DuplicateKey(json.JSONDecodeError):
    """A JSON object that names one key twice with different values: json.loads would keep the last silently, so
    which one the row means cannot be known (reason ``duplicate_key``; the same key and value twice is harmless)."""

    reason = "duplicate_key"

    def __init__(self, keys: list[str], doc: str):
        self.keys = keys
        super().__init__(f"key {keys[0]!r} appears twice with different values (json.loads keeps the last)", doc, 0)


class _Ambiguous(dict):
    """A parsed JSON object in which a key appeared twice with different values (``keys``)."""

    keys: list[str]


def _duplicate_keys(value: object) -> list[str]:
    """The keys named twice (with different values) in any object inside ``value``, as marked by _parse."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item, _Ambiguous):
                found += item.keys
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _parse(text: str) -> tuple[object, bool]:
    """json.loads, and whether some object in it names a key twice with different values (those objects come back
    marked as _Ambiguous)."""
    seen = []

    def pairs(items: list[tuple[str, object]]) -> dict:
        obj = dict(items)
        if len(obj) != len(items):
            first: dict = {}
            keys = [k for k, v in items if first.setdefault(k, v) != v]
            if keys:
                obj = _Ambiguous(obj)
                obj.keys = sorted(set(keys))
                seen.append(True)
        return obj

    return json.loads(text, object_pairs_hook=pairs), bool(seen)


def _load(text: str) -> tuple[object, bool]:
    """(json.loads, or the JSONDecodeError for what would crash the parser: nesting too deep, a number too long to
    convert (over Python's 4300 digits); whether an object in it names a key twice with different values)."""
    try:
        return _parse(text)
    except json.JSONDecodeError as exc:
        return exc, False
    except RecursionError:
        return json.JSONDecodeError("nested too deeply", text, 0), False
    except ValueError as exc:  # int("1" * 5000): over sys.get_int_max_str_digits()
        return json.JSONDecodeError(f"a number that cannot be read ({str(exc).split(';')[0]})", text, 0), False


def _loads(text: str) -> object:
    """One row's json.loads, with errors returned, not raised (_load); a key named twice with different values is a
    DuplicateKey."""
    value, ambiguous = _load(text)
    return DuplicateKey(_duplicate_keys(value), text) if ambiguous else value


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


def iter_lines(handle: BinaryIO, max_bytes: int, base: int = 0) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """(byte offset, bytes without the newline) of each line of a binary stream that starts at byte ``base``. One
    longer than ``max_bytes`` comes as a LineTooLong: it streams through a sha256 to its end, so memory stays near
    ``max_bytes`` + one block whatever the file holds."""
    pieces: list[bytes] = []
    size = 0
    offset = base
    digest = None
    head = b""
    while block := handle.read(_BLOCK):
        start = 0
        while True:
            newline = block.find(b"\n", start)
            piece = block[start:] if newline < 0 else block[start:newline]
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
            yield offset, (LineTooLong(offset, size, digest.hexdigest(), head) if digest else b"".join(pieces))
            offset += size + 1
            pieces, size, digest = [], 0, None
    if size:  # a last line without a newline
        yield offset, (LineTooLong(offset, size, digest.hexdigest(), head) if digest else b"".join(pieces))


def _raw_head(line: LineTooLong) -> str:
    return safe_text(line.head.decode("utf-8", errors="backslashreplace")) + f"... ({line.length} bytes)"


# --- CSV ------------------------------------------------------------------------------------------------------------


class CsvDesync(csv.Error):
    """A line inside a stretch where the CSV quoting broke: from the record where a quote went astray to where the
    reading is sure of record boundaries again. Records and fragments cannot be told apart there, so every line of
    the stretch is quarantined on its own (reason ``csv_desync``)."""

    reason = "csv_desync"


_START, _UNQUOTED, _QUOTED, _CLOSED, _CLOSED_CR = range(5)


class _CsvScanner:
    """Where RFC 4180 records end, fed a line at a time (in pieces, so an over-long line is never held): a quote
    opens a field only at the start of a field (elsewhere it is text, as Python's csv reads it), ``""`` inside a
    quoted field is a quote, and a closing quote must be followed by a comma or the end of the line. Counts cells
    and notes the first place the quoting breaks (``problem``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.state = _START
        self.cells = 1
        self.content = False  # anything but ASCII whitespace in the record (else it is a blank line)
        self.has_quote = False  # a quote anywhere in the record (without one, its cell count is its own affair)
        self.problem: str | None = None
        self.quote_broke = False  # the problem is in the quoting, not only the cell count
        self.loose = False  # a quote inside an unquoted field (Python's csv reads it as text; RFC 4180 does not)
        self.opened: tuple[int, int] | None = None  # (line, column) of the quote of the field now open
        self.spanning: tuple[int, int] | None = None  # the first quoted field that went on past a line end
        # At the first "text after a closing quote": the other reading, that the quote was text and the field is
        # still open (a copy of this scanner, fed the rest of the piece).
        self.fork: _CsvScanner | None = None

    def _break(self, what: str) -> None:
        self.quote_broke = True
        if self.problem is None:
            where = f"line {self.opened[0]}, column {self.opened[1]}" if self.opened else "?"
            self.problem = f"the quoted field opened at {where} {what}"

    def flipped(self) -> _CsvScanner:
        """This record read the other way from here: inside a quoted field (the quote that closed it was text)."""
        other = _CsvScanner()
        other.__dict__.update(
            {**self.__dict__, "state": _QUOTED, "problem": None, "quote_broke": False, "loose": False, "fork": None}
        )
        return other

    def feed(self, piece: bytes, line: int, column: int) -> None:
        """One piece of line ``line`` (no newline in it), whose first byte is at ``column`` (1-based)."""
        if not self.content and piece.strip():
            self.content = True
        if b'"' not in piece:  # the common case: only the commas count
            if self.state in (_START, _UNQUOTED) and piece:
                self.cells += piece.count(b",")
                self.state = _START if piece.endswith(b",") else _UNQUOTED
            elif self.state in (_CLOSED, _CLOSED_CR) and piece:
                self._feed(piece, line, column)
            return
        self.has_quote = True
        self._feed(piece, line, column)

    def _feed(self, piece: bytes, line: int, column: int) -> None:
        i, n = 0, len(piece)
        while i < n:
            state = self.state
            if state == _START:
                if piece[i] == 0x22:
                    self.state, self.opened, i = _QUOTED, (line, column + i), i + 1
                else:
                    self.state = _UNQUOTED
            elif state == _UNQUOTED:
                comma = piece.find(b",", i)
                if not self.loose and piece.find(b'"', i, n if comma < 0 else comma) >= 0:
                    self.loose = True
                if comma < 0:
                    break
                self.cells, self.state, i = self.cells + 1, _START, comma + 1
            elif state == _QUOTED:
                quote = piece.find(b'"', i)
                if quote < 0:
                    break
                self.state, i = _CLOSED, quote + 1
            else:  # just after a quote inside a quoted field (or after a CR that follows one)
                byte = piece[i]
                if state == _CLOSED and byte == 0x22:  # "" is a quote inside the field
                    self.state = _QUOTED
                elif state == _CLOSED and byte == 0x2C:
                    self.cells, self.state = self.cells + 1, _START
                elif state == _CLOSED and byte == 0x0D:
                    self.state = _CLOSED_CR  # fine only as the CR of a CRLF line end
                else:
                    if self.problem is None:
                        self.fork = self.flipped()
                        self.fork.feed(piece[i:], line, column + i)
                    self._break(f"closes at line {line}, column {column + i - 1}, and text follows the closing quote")
                    self.state = _UNQUOTED  # read on as Python's csv does, to find where the record ends
                    continue
                i += 1

    def end_of_line(self) -> bool:
        """A newline arrives: True when it ends the record (it does, unless a quoted field is open)."""
        if self.state == _QUOTED:
            self.spanning = self.spanning or self.opened
            return False
        return True

    def end_of_file(self) -> None:
        if self.state == _QUOTED:
            self.spanning = self.spanning or self.opened
            self._break("is never closed (the file ends inside it)")

    def check_width(self, width: int | None) -> None:
        """At the end of a record: a record that is not blank has the header's cell count."""
        if width is not None and self.content and self.cells != width and self.problem is None:
            self.problem = f"a record with {self.cells} cells where the header has {width}"


@dataclass(frozen=True)
class _Stretch:
    """Lines whose record boundaries cannot be trusted: from ``start`` (the first byte of ``first_line``) to ``end``
    (just past the last byte of ``last_line``, its newline left out)."""

    first_line: int
    last_line: int
    start: int
    end: int
    problem: str


class _Bounded:
    """The next ``size`` bytes of a stream, as a stream."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle, self.left = handle, size

    def read(self, n: int) -> bytes:
        data = self.handle.read(min(n, self.left)) if self.left > 0 else b""
        self.left -= len(data)
        return data


def _line_events(handle: BinaryIO, at: int = 0) -> Iterator[tuple[bytes | None, int]]:
    """(piece, offset of its first byte) for each piece of a line (no newline in it), then (None, offset of the
    newline) at each newline; ``at``: the offset the handle is at."""
    while block := handle.read(_BLOCK):
        start = 0
        while True:
            newline = block.find(b"\n", start)
            yield (block[start:] if newline < 0 else block[start:newline]), at + start
            if newline < 0:
                break
            yield None, at + newline
            start = newline + 1
        at += len(block)


def _broken_stretches(handle: BinaryIO, base: int, first_line: int = 1, width: int | None = None) -> list[_Stretch]:
    """A pass over a CSV file from byte ``base`` (line ``first_line``, where a record starts; ``width``: the
    header's cell count, None when the header is still to come): the stretches of lines where record boundaries
    cannot be trusted because the quoting broke. Memory stays constant: only the stretches are kept.

    Where a record's quoting breaks (text after a closing quote, a wrong cell count in a record with quotes), two
    readings go on from there: the own one (the quote closed the field, as Python's csv reads it) and the other one
    (the quote was text: the field is still open). The stretch ends where both agree again that a record ends;
    where one of them breaks too, the other one holds (up to the end of its record); where both do, the stretch
    ends there. It starts one record earlier when that record ended on a closing quote and reading that quote as
    text makes the two records one good record (a stray quote that cut a field short). After a stretch, the
    reading is on probation until a record with quotes reads cleanly: a record with a quote inside an unquoted
    field joins the stretch, and one whose quoting breaks reopens it. A quote still open at the end of the file
    makes a stretch to the end."""
    stretches: list[_Stretch] = []
    own = _CsvScanner()
    other: _CsvScanner | None = None  # the other reading, while the two may disagree
    # The own reading's previous record, when it ended on a closing quote: (first line, offset, its scanner read on
    # as if that quote were text).
    previous: tuple[int, int, _CsvScanner] | None = None
    broken: tuple[int, int, str] | None = None  # (first line, offset, problem) of the record where they split
    own_broken_end: tuple[int, int] | None = None  # (line, end offset) of that record under the own reading
    own_failed = False  # a later record under the own reading broke too
    probation = False  # a stretch just ended: no record with quotes has read cleanly since
    record = (first_line, base)  # (first line, offset) of the own reading's current record
    line, column, pos = first_line, 0, base

    def open_break(problem: str) -> None:
        nonlocal broken, probation
        if probation and stretches:  # the stretch that just ended was not over
            last = stretches.pop()
            broken = (last.first_line, last.start, last.problem)
        else:
            broken = (*record, problem)
        probation = False

    def close(last_line: int, end: int) -> None:
        nonlocal broken, other, own_broken_end, own_failed, probation
        first, start, problem = broken
        stretches.append(_Stretch(first, max(last_line, first), start, max(end, start), problem))
        broken, other, own_broken_end, own_failed, probation = None, None, None, False, True

    def sound(scanner: _CsvScanner) -> bool:
        return scanner.problem is None and not scanner.loose

    def joins_previous(end: int) -> bool:
        """Whether the previous record, its last closing quote read as text, ends with the current one as one good
        record (the current record's bytes are read again, and the stream put back)."""
        shadow = previous[2]
        resume = handle.tell()
        handle.seek(record[1])
        shadow_line, shadow_column = record[0], 0
        for piece, _ in _line_events(_Bounded(handle, end - record[1])):
            if piece is None:
                if shadow.end_of_line():  # a record ends inside the current one: not one record with it
                    handle.seek(resume)
                    return False
                shadow_line, shadow_column = shadow_line + 1, 0
            else:
                shadow.feed(piece, shadow_line, shadow_column + 1)
                shadow_column += len(piece)
        handle.seek(resume)
        ends = shadow.end_of_line()
        if ends:
            shadow.check_width(width)
        return ends and sound(shadow)

    for piece, at in _line_events(handle, base):
        if piece is not None:
            own.feed(piece, line, column + 1)
            if other is not None:
                other.feed(piece, line, column + 1)
            column, pos = column + len(piece), at + len(piece)
            if broken is None and width is not None and own.fork is not None:
                open_break(own.problem)
                other = own.fork
            own.fork = None
            continue
        pos = at + 1
        own_ends = own.end_of_line()
        other_ends = other.end_of_line() if other is not None else False
        for scanner, ends in ((own, own_ends), (other, other_ends)):
            if ends:
                scanner.check_width(width)
        ended_on_quote = own.state in (_CLOSED, _CLOSED_CR)
        fresh = own_ends
        if width is None:
            if own_ends and own.content:
                width = own.cells  # the header
                ended_on_quote = False
        elif broken is None:
            if own_ends and own.problem is not None and own.has_quote:
                open_break(own.problem)
                other, own_broken_end = own.flipped(), (line, at)  # the other reading: the newline inside a field
            elif own_ends and probation and own.loose:
                last = stretches[-1]  # a quote inside an unquoted field right after a stretch: it joins the stretch
                stretches[-1] = _Stretch(last.first_line, line, last.start, at, last.problem)
            elif own_ends and probation and own.has_quote and sound(own):
                probation = False  # a record with quotes read cleanly: the reading is sure again
        else:
            if own_ends and own_broken_end is None:
                own_broken_end = (line, at)
            elif own_ends and (own.quote_broke or own.loose or own.problem and own.spanning is not None):
                own_failed = True  # a later record's quoting breaks too (a short line alone tells nothing)
            other_failed = other is not None and not sound(other)
            if other is None:  # the other reading broke while the own broken record went on: it ends here
                if own_broken_end is not None:
                    close(*own_broken_end)
            elif other_failed and not own_failed:
                if own_broken_end is not None:
                    close(*own_broken_end)  # the own reading holds, and goes on as it is
                else:
                    other = None
            elif own_failed and (other_failed or other_ends):
                close(line, at)  # the other reading holds up to the end of its record here, or neither does
                fresh = True
            elif own_ends and other_ends and own_broken_end is not None:
                close(line, at)  # the two readings agree again
        if broken is not None and own_ends and own_broken_end == (line, at) and previous is not None:
            if broken[0] == record[0] and joins_previous(at):
                broken = (previous[0], previous[1], broken[2])  # the previous record's last quote was the stray one
        if fresh:
            joinable = own.content and ended_on_quote and broken is None and not probation
            previous = (*record, own.flipped()) if joinable else None
            own.reset()
            record = (line + 1, at + 1)
        if other is not None and other_ends:
            other.reset()
        line, column = line + 1, 0
    last = line if column else line - 1
    own.end_of_file()
    if column:  # a last record without a newline
        own.check_width(width)
    if broken is not None:
        if other is not None:
            other.end_of_file()
        if own_broken_end is not None and not own_failed and (other is None or not sound(other)):
            close(*own_broken_end)
        else:
            close(last, pos)
    elif own.problem is not None and own.spanning is not None and width is not None:
        open_break(own.problem)  # a quote open at the end of the file, or a last record across lines
        close(last, pos)
    return stretches


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
    """The records of a CSV file (a seekable stream), cut where _CsvScanner says they end (a newline in a quoted
    field does not end one). A record longer than ``max_bytes`` comes as a LineTooLong (streamed through a sha256,
    never held). A byte-order mark opening the file is skipped.

    One pass while the quoting holds, each record held back until the next one reads cleanly (a stray quote can cut
    the record before it short). At the first record whose quoting breaks, _broken_stretches reads the rest of the
    file from the record held back, and the reading goes on from there with its stretches as records of their own
    (``stretch``), read again line by line."""
    if not handle.seekable():
        raise DataValidationError("a CSV file is read twice where its quoting breaks: open it seekable")
    base = len(_BOM) if handle.read(len(_BOM)) == _BOM else 0
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
        stretches = _broken_stretches(handle, restart.offset, restart.first_line, width)
        start, first_line = restart.offset, restart.first_line


def _cut_records(
    handle: BinaryIO, max_bytes: int, start: int, first_line: int, stretches: list[_Stretch] | None
) -> Iterator[tuple[CsvRecord, int, bool, bool]]:
    """(record, its cell count, whether it holds a quote, whether it is not blank) from byte ``start`` (line
    ``first_line``, the start of a record), with ``stretches`` (when known) as records of their own."""
    stretches = list(stretches or [])
    scanner = _CsvScanner()
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

    events = _line_events(handle, start)
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
                events = _line_events(handle, offset)
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
                if len(head) < _HEAD:
                    head += piece[: _HEAD - len(head)]
            elif size > max_bytes:
                pieces.append(piece)
                head = _head(pieces)
                digest = hashlib.sha256()
                for held in pieces:
                    digest.update(held)
                pieces = []
            else:
                pieces.append(piece)
    if size or scanner.state == _QUOTED:  # a last record without a newline, or a quote open at the end
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
        text = _raw_head(line) if isinstance(line, LineTooLong) else line.decode("utf-8", errors="backslashreplace")
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
            parsed = _loads(row[key])
            if isinstance(parsed, DuplicateKey):
                return parsed
            if not isinstance(parsed, json.JSONDecodeError):
                row[key] = parsed  # else left a string: normalize() quarantines it as wrong_type
    return row


def _csv_rows(name: str, handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, str, object]]:
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
            yield number, _raw_head(data), data
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
        yield number, (safe_text(text) if isinstance(row, DuplicateKey) else _dump_raw(row)), row


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
    data, ambiguous = _load(text)
    if isinstance(data, json.JSONDecodeError):
        first = text.lstrip().split("\n", 1)[0]
        if data.msg == "Extra data" and isinstance(_load(first)[0], (dict, list)):  # a list: a bare array of turns
            lines = text.split("\n")
            for number, line in enumerate(lines[:-1] if not lines[-1].strip() else lines, start=1):
                yield number, line, (_loads(line) if line.strip() else BLANK)
            return
        yield 1, text, data
        return
    rows = data if isinstance(data, list) else [data]
    for number, row in enumerate(rows, start=1):
        twice = _duplicate_keys(row) if ambiguous else []
        yield number, _dump_raw(row), (DuplicateKey(twice, "") if twice else row)


def open_input(path: str, allowed_roots: Sequence[str] | None) -> BinaryIO:
    """A data file opened for binary reading. A local file is opened by r1lib.paths.open_confined, so the roots
    hold for the file actually read (resolved from ``allowed_roots``; None: the caller vouches for the path, as the
    parser tests do); a remote URL through fsspec, after its prefix is checked against the roots."""
    import fsspec

    roots = resolve_roots(allowed_roots) if allowed_roots is not None else None
    if not is_url(path):
        return open_confined(path, roots, ROOTS_FIELD)
    if roots is not None:
        confine(path, roots, ROOTS_FIELD)
    return fsspec.open(path, "rb").open()


def iter_raw_rows(
    path: str | Path, max_line_bytes: int = MAX_LINE_BYTES, allowed_roots: Sequence[str] | None = None
) -> Iterator[tuple[int, str, object]]:
    """Yield (line or row number, raw text, parsed value or the exception that parsing raised, a LineTooLong, or
    BLANK), 1-based.

    Streams: JSON lines and CSV records in blocks (bounded by ``max_line_bytes``), Parquet in batches; a .json file
    (one object or an array) is read whole, up to ``max_line_bytes``. ``path`` may be any fsspec URL; the file is
    opened by open_input, which checks ``allowed_roots`` against the file actually opened.
    """
    name = str(path)
    suffix = Path(name.split("?")[0]).suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open_input(name, allowed_roots) as handle:
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
        with open_input(name, allowed_roots) as handle:
            blob = handle.read(max_line_bytes + 1)
        if len(blob) > max_line_bytes:
            raise DataValidationError(
                f"{name}: a .json file is read whole, and this one is over data.max_line_bytes ({max_line_bytes} "
                "bytes); convert it to JSON lines (.jsonl, one row per line), which is streamed"
            )
        yield from _json_rows(name, blob)
    elif suffix == ".csv":
        with open_input(name, allowed_roots) as handle:
            yield from _csv_rows(name, handle, max_line_bytes)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq
        from pyarrow import ArrowException

        with open_input(name, allowed_roots) as handle:
            number = 0
            try:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=8192):
                    for row in batch.to_pylist():
                        number += 1
                        row = {k: v for k, v in row.items() if v is not None}  # absent columns of a mixed file
                        yield number, _dump_raw(row), row
            except (ArrowException, OSError) as exc:  # not Parquet, truncated, a corrupt page: the same bytes again
                if isinstance(exc, OSError) and exc.errno is not None:
                    raise  # the OS failed to read it (a retry may help), not pyarrow to parse it
                raise DataValidationError(
                    f"{name}: not a readable Parquet file after row {number} ({exc}); rewrite it, or convert it to "
                    "JSON lines"
                ) from None
    elif suffix == ".txt":
        with open_input(name, allowed_roots) as handle:
            yield from _text_rows(handle, max_line_bytes)
    else:
        raise DataValidationError(
            f"{name}: unsupported file type {suffix!r} (use .jsonl, .json, .csv, .parquet, or .txt for plain text)"
        )
