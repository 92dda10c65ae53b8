"""Where the records of a CSV file end, and where its quoting breaks.

CsvScanner reads RFC 4180 a line at a time (in pieces, so an over-long line is never held); broken_stretches finds
the stretches of lines where a stray quote desynchronizes the reading, so that records and fragments cannot be told
apart there (csv_rows quarantines each line of such a stretch as ``csv_desync``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from r1lib.data.lines import BLOCK_BYTES

START, UNQUOTED, QUOTED, CLOSED, CLOSED_CR = range(5)


class CsvScanner:
    """Where RFC 4180 records end, fed a line at a time (in pieces, so an over-long line is never held): a quote
    opens a field only at the start of a field (elsewhere it is text, as Python's csv reads it), ``""`` inside a
    quoted field is a quote, and a closing quote must be followed by a comma or the end of the line. Counts cells
    and notes the first place the quoting breaks (``problem``)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.state = START
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
        self.fork: CsvScanner | None = None

    def _break(self, what: str) -> None:
        self.quote_broke = True
        if self.problem is None:
            where = f"line {self.opened[0]}, column {self.opened[1]}" if self.opened else "?"
            self.problem = f"the quoted field opened at {where} {what}"

    def flipped(self) -> CsvScanner:
        """This record read the other way from here: inside a quoted field (the quote that closed it was text)."""
        other = CsvScanner()
        other.__dict__.update(
            {**self.__dict__, "state": QUOTED, "problem": None, "quote_broke": False, "loose": False, "fork": None}
        )
        return other

    def feed(self, piece: bytes, line: int, column: int) -> None:
        """One piece of line ``line`` (no newline in it), whose first byte is at ``column`` (1-based)."""
        if not self.content and piece.strip():
            self.content = True
        if b'"' not in piece:  # the common case: only the commas count
            if self.state in (START, UNQUOTED) and piece:
                self.cells += piece.count(b",")
                self.state = START if piece.endswith(b",") else UNQUOTED
            elif self.state in (CLOSED, CLOSED_CR) and piece:
                self._feed(piece, line, column)
            return
        self.has_quote = True
        self._feed(piece, line, column)

    def _feed(self, piece: bytes, line: int, column: int) -> None:
        i, n = 0, len(piece)
        while i < n:
            state = self.state
            if state == START:
                if piece[i] == 0x22:
                    self.state, self.opened, i = QUOTED, (line, column + i), i + 1
                else:
                    self.state = UNQUOTED
            elif state == UNQUOTED:
                comma = piece.find(b",", i)
                if not self.loose and piece.find(b'"', i, n if comma < 0 else comma) >= 0:
                    self.loose = True
                if comma < 0:
                    break
                self.cells, self.state, i = self.cells + 1, START, comma + 1
            elif state == QUOTED:
                quote = piece.find(b'"', i)
                if quote < 0:
                    break
                self.state, i = CLOSED, quote + 1
            else:  # just after a quote inside a quoted field (or after a CR that follows one)
                byte = piece[i]
                if state == CLOSED and byte == 0x22:  # "" is a quote inside the field
                    self.state = QUOTED
                elif state == CLOSED and byte == 0x2C:
                    self.cells, self.state = self.cells + 1, START
                elif state == CLOSED and byte == 0x0D:
                    self.state = CLOSED_CR  # fine only as the CR of a CRLF line end
                else:
                    if self.problem is None:
                        self.fork = self.flipped()
                        self.fork.feed(piece[i:], line, column + i)
                    self._break(f"closes at line {line}, column {column + i - 1}, and text follows the closing quote")
                    self.state = UNQUOTED  # read on as Python's csv does, to find where the record ends
                    continue
                i += 1

    def end_of_line(self) -> bool:
        """A newline arrives: True when it ends the record (it does, unless a quoted field is open)."""
        if self.state == QUOTED:
            self.spanning = self.spanning or self.opened
            return False
        return True

    def end_of_file(self) -> None:
        if self.state == QUOTED:
            self.spanning = self.spanning or self.opened
            self._break("is never closed (the file ends inside it)")

    def check_width(self, width: int | None) -> None:
        """At the end of a record: a record that is not blank has the header's cell count."""
        if width is not None and self.content and self.cells != width and self.problem is None:
            self.problem = f"a record with {self.cells} cells where the header has {width}"


@dataclass(frozen=True)
class Stretch:
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


def line_events(handle: BinaryIO, at: int = 0) -> Iterator[tuple[bytes | None, int]]:
    """(piece, offset of its first byte) for each piece of a line (no newline in it), then (None, offset of the
    newline) at each newline; ``at``: the offset the handle is at."""
    while block := handle.read(BLOCK_BYTES):
        start = 0
        while True:
            newline = block.find(b"\n", start)
            yield (block[start:] if newline < 0 else block[start:newline]), at + start
            if newline < 0:
                break
            yield None, at + newline
            start = newline + 1
        at += len(block)


def broken_stretches(handle: BinaryIO, base: int, first_line: int = 1, width: int | None = None) -> list[Stretch]:
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
    stretches: list[Stretch] = []
    own = CsvScanner()
    other: CsvScanner | None = None  # the other reading, while the two may disagree
    # The own reading's previous record, when it ended on a closing quote: (first line, offset, its scanner read on
    # as if that quote were text).
    previous: tuple[int, int, CsvScanner] | None = None
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
        stretches.append(Stretch(first, max(last_line, first), start, max(end, start), problem))
        broken, other, own_broken_end, own_failed, probation = None, None, None, False, True

    def sound(scanner: CsvScanner) -> bool:
        return scanner.problem is None and not scanner.loose

    def joins_previous(end: int) -> bool:
        """Whether the previous record, its last closing quote read as text, ends with the current one as one good
        record (the current record's bytes are read again, and the stream put back)."""
        shadow = previous[2]
        resume = handle.tell()
        handle.seek(record[1])
        shadow_line, shadow_column = record[0], 0
        for piece, _ in line_events(_Bounded(handle, end - record[1])):
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

    for piece, at in line_events(handle, base):
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
        ended_on_quote = own.state in (CLOSED, CLOSED_CR)
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
                stretches[-1] = Stretch(last.first_line, line, last.start, at, last.problem)
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
