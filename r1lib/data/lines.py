"""Reading lines in bounded memory, and the values every reader yields besides parsed rows.

A line (a CSV record) longer than ``data.max_line_bytes`` is never held: it streams through a sha256 to its end and
comes back as a ``LineTooLong``; a blank line comes back as ``BLANK``. Raw text kept for the quarantine is made
writable as UTF-8 here (safe_text, dump_raw, raw_head).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLANK = object()  # what iter_raw_rows yields for a blank line (a JSON ``null`` row is None, and is quarantined)
BOM = b"\xef\xbb\xbf"
BLOCK_BYTES = 1 << 20  # bytes read at a time
HEAD_BYTES = 200  # bytes of an over-long line kept in the quarantine, to recognize it by


def safe_text(text: str) -> str:
    """Text that can be written as UTF-8 (lone surrogates become backslash escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def dump_raw(row: object) -> str:
    try:
        return safe_text(json.dumps(row, ensure_ascii=False, default=str))
    except (RecursionError, ValueError):
        return safe_text(repr(row)[:10_000])


@dataclass(frozen=True)
class LineTooLong:
    """A line (a CSV record) over ``data.max_line_bytes``: streamed through a sha256, never held in memory."""

    offset: int  # of its first byte in the file
    length: int  # in bytes, without its newline
    sha256: str
    head: bytes  # its first bytes


def head_of(pieces: list[bytes]) -> bytes:
    return b"".join(p[:HEAD_BYTES] for p in pieces[:HEAD_BYTES])[:HEAD_BYTES]


def iter_lines(handle: BinaryIO, max_bytes: int, base: int = 0) -> Iterator[tuple[int, bytes | LineTooLong]]:
    """(byte offset, bytes without the newline) of each line of a binary stream that starts at byte ``base``. One
    longer than ``max_bytes`` comes as a LineTooLong: it streams through a sha256 to its end, so memory stays near
    ``max_bytes`` + one block whatever the file holds."""
    pieces: list[bytes] = []
    size = 0
    offset = base
    digest = None
    head = b""
    while block := handle.read(BLOCK_BYTES):
        start = 0
        while True:
            newline = block.find(b"\n", start)
            piece = block[start:] if newline < 0 else block[start:newline]
            size += len(piece)
            if digest is not None:
                digest.update(piece)
                if len(head) < HEAD_BYTES:  # a cap below HEAD_BYTES: the head goes on past it
                    head += piece[: HEAD_BYTES - len(head)]
            elif size > max_bytes:  # from here on the line is hashed and dropped, not kept
                pieces.append(piece)
                head = head_of(pieces)
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


def raw_head(line: LineTooLong) -> str:
    return safe_text(line.head.decode("utf-8", errors="backslashreplace")) + f"... ({line.length} bytes)"
