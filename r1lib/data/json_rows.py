"""JSON rows: JSON lines (one row per line, read in blocks) and .json files (one object or an array, read whole).

A row that names one key twice with different values comes back as a ``DuplicateKey`` (json.loads would keep the last
silently); what would crash the parser (nesting too deep, a number too long to convert) comes back as a
JSONDecodeError, so the caller can quarantine the row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import BinaryIO

from r1lib.data.lines import BLANK, BOM, LineTooLong, dump_raw, iter_lines, raw_head


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


def loads_row(text: str) -> object:
    """One row's json.loads, with errors returned, not raised (_load); a key named twice with different values is a
    DuplicateKey."""
    value, ambiguous = _load(text)
    return DuplicateKey(_duplicate_keys(value), text) if ambiguous else value


def jsonl_rows(handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, str, object]]:
    """The rows of a JSON lines file as iter_raw_rows yields them, numbered by line from 1."""
    for number, (offset, raw) in enumerate(iter_lines(handle, max_line_bytes), start=1):
        if isinstance(raw, LineTooLong):
            yield number, raw_head(raw), raw
            continue
        if offset == 0 and raw.startswith(BOM):
            raw = raw[len(BOM) :]  # a byte-order mark opens the file; it is not part of the first row
        if not raw.strip():  # blank: ASCII whitespace only (a line of control characters is a bad row)
            yield number, raw.decode("utf-8", errors="backslashreplace"), BLANK
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, raw.decode("utf-8", errors="backslashreplace"), exc
            continue
        yield number, text, loads_row(text)


def json_rows(name: str, blob: bytes) -> Iterator[tuple[int, str, object]]:
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
                yield number, line, (loads_row(line) if line.strip() else BLANK)
            return
        yield 1, text, data
        return
    rows = data if isinstance(data, list) else [data]
    for number, row in enumerate(rows, start=1):
        twice = _duplicate_keys(row) if ambiguous else []
        yield number, dump_raw(row), (DuplicateKey(twice, "") if twice else row)
