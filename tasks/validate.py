"""Stage 1, validate: read the input files, normalize every row into a record, quarantine what is wrong.

Nothing is lost: every input row ends either in the accepted records or in ``quarantine.jsonl`` with its file, line
(or row) number, a reason code, the offending field and the raw text, so accepted + quarantined == rows read. The
stage fails (without retry: a retry cannot fix data) when the rejected share of a file exceeds
``data.max_rejected_fraction``.

Inputs: each entry of ``data.train_paths`` / ``test_path`` / ``replay_path`` is a file, a folder or a glob, local or
any fsspec URL; files are JSON lines, JSON (one object or an array, e.g. Alpaca), CSV or Parquet, and the row format
(instruction/output, Alpaca, ShareGPT, OpenAI messages, prompt/completion, R1 reasoning) is detected per row. Every
entry and every file it expands to must lie under ``data.allowed_roots`` (symlinks resolved; archives refused:
r1lib/paths.py).

Memory stays bounded whatever a file holds: JSON lines and CSV records are read in blocks, and one longer than
``data.max_line_bytes`` is never held: it streams through a sha256 to its end and is quarantined as line_too_long
with its byte offset, length and hash (its first bytes as ``raw``). A .json file, read whole, may not exceed the same
cap (the error says to use JSON lines).

Checks, each with a stable reason code in the quarantine and in the per-file report: line_too_long, invalid_utf8 (bad
bytes or lone surrogates), invalid_json, invalid_csv (unparsable, or more cells than the header), not_an_object,
unknown_format, missing_field, wrong_type, empty_field, control_character, field_too_long, unknown_role, role_order,
unsupported_content (an image or tool-call part), conflicting_system, conflicting_reasoning (two different texts
for one turn's reasoning or the system prompt: never one picked silently), unclosed_think, empty_reasoning,
empty_answer, schema (the record model in r1lib/records.py). Token length against
``tokenize.max_seq_length`` needs the model's tokenizer, so it is enforced by the tokenize stage (policy
``tokenize.truncation``: drop -> ``runs/<run>/tokenize/<split>/quarantine.jsonl`` with reason ``too_long``, truncate
-> counted in its audit, fail -> the stage fails); here only ``max_field_chars`` bounds the length. Duplicates and
train/test leakage are the dedup stage's (tasks/dedup.py).

Sharded (flows/data.py): ``validate_input`` is mapped over the input files, writing each file's accepted records in
shards of ``runner.shard_rows`` (the unit every later stage maps over) and its rejected rows in a quarantine part;
``merge_validated`` joins them in input order into ``<split>.jsonl``, ``quarantine.jsonl`` and ``report.json``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from r1lib.config import DataConfig
from r1lib.errors import DataValidationError
from r1lib.io import concat_files, write_json
from r1lib.policy import stage_options
from r1lib.paths import confine, resolve_roots
from r1lib.records import RecordError, check_schema, make_record, normalize
from r1lib.shards import DEFAULT_SHARD_ROWS, JsonlWriter, Shard, ShardWriter

log = logging.getLogger(__name__)


class FileReport(BaseModel):
    file: str
    rows: int
    accepted: int
    quarantined: int
    blank_lines: int
    reasons: dict[str, int]


class ValidatedData(BaseModel):
    train: str
    test: str
    replay: str | None
    quarantine: str
    reports: list[FileReport]
    # The same records as train/test/replay, in shards of runner.shard_rows: what the data stages map over.
    shards: dict[str, list[Shard]] = {}
    report: str | None = None  # validate's report.json
    dedup_report: str | None = None  # dedup's, once it ran

    @property
    def rows_in(self) -> int:
        return sum(r.rows for r in self.reports)

    @property
    def quarantined(self) -> int:
        return sum(r.quarantined for r in self.reports)


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


def _safe(text: str) -> str:
    """Text that can be written as UTF-8 (lone surrogates become backslash escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _dump_raw(row: object) -> str:
    try:
        return _safe(json.dumps(row, ensure_ascii=False, default=str))
    except (RecursionError, ValueError):
        return _safe(repr(row)[:10_000])


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


def _exists(path: str) -> bool:
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
                    head += piece[:_HEAD - len(head)]
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
    return _safe(line.head.decode("utf-8", errors="backslashreplace")) + f"... ({line.length} bytes)"


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
            record = record[len(_BOM):]
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
            yield number, _safe(record.decode("utf-8", errors="backslashreplace")), exc
            continue
        if header is None:
            header, cells = cells[0], cells[1:]
        for values in cells:  # one record, or several where a stray quote made iter_lines join lines
            if not values:
                yield number, "", BLANK
                continue
            number += 1
            if len(values) > len(header):
                yield number, _safe(text), csv.Error(f"{len(values)} cells, the header has {len(header)}")
                continue
            row = {k: v for k, v in zip(header, values)
                   if not (v == "" and k not in ("instruction", "output", "prompt", "completion"))}
            for key in _NESTED_FIELDS:
                if isinstance(row.get(key), str) and row[key].lstrip().startswith("["):
                    parsed = _loads(row[key])
                    if not isinstance(parsed, json.JSONDecodeError):
                        row[key] = parsed  # else left a string: normalize() quarantines it as wrong_type
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
                    raw = raw[len(_BOM):]  # a byte-order mark opens the file; it is not part of the first row
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
                "bytes); convert it to JSON lines (.jsonl, one row per line), which is streamed")
        try:
            text = blob.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            yield 1, blob.decode("utf-8", errors="backslashreplace"), exc
            return
        data = _loads(text)
        if isinstance(data, json.JSONDecodeError):
            yield 1, text, data
            return
        rows = data if isinstance(data, list) else [data]
        for number, row in enumerate(rows, start=1):
            yield number, _dump_raw(row), row
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
    else:
        raise DataValidationError(f"{name}: unsupported file type {suffix!r} (use .jsonl, .json, .csv or .parquet)")


def iter_validated(path: str | Path, max_chars: int,
                   max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[bool, dict | None, int]]:
    """Stream one file: (True, record, number) for each accepted row, (False, quarantine row, number) for each
    rejected one, (False, None, number) for a blank line (counted, not quarantined)."""
    name = str(path)
    for number, raw, parsed in iter_raw_rows(path, max_line_bytes):
        if parsed is BLANK:
            yield False, None, number
            continue
        extra = {}
        if isinstance(parsed, LineTooLong):
            reason, field = "line_too_long", None
            message = (f"{parsed.length} bytes from byte {parsed.offset}, over data.max_line_bytes ({max_line_bytes}); "
                       f"not read, sha256 {parsed.sha256}")
            extra = {"offset": parsed.offset, "bytes": parsed.length, "sha256": parsed.sha256}
        elif isinstance(parsed, UnicodeDecodeError):
            reason, field, message = "invalid_utf8", None, f"not valid UTF-8 ({parsed.reason} at byte {parsed.start})"
        elif isinstance(parsed, json.JSONDecodeError):
            reason, field, message = "invalid_json", None, f"not valid JSON ({parsed.msg} at column {parsed.colno})"
        elif isinstance(parsed, csv.Error):
            reason, field, message = "invalid_csv", None, f"not a valid CSV record ({parsed})"
        else:
            try:
                record = make_record(normalize(parsed, max_chars), name, number)
                check_schema(record)
                yield True, record, number
                continue
            except RecordError as exc:
                reason, field, message = exc.reason, exc.field, str(exc)
        yield False, {"file": name, "line": number, "reason": reason, "field": field,
                      "message": _safe(f"{name}:{number}: {message}"), "raw": _safe(raw), **extra}, number


def validate_file(path: str | Path, max_chars: int,
                  max_line_bytes: int = MAX_LINE_BYTES) -> tuple[list[dict], list[dict], FileReport]:
    """Records and quarantine rows of one file, plus its report."""
    if not _exists(str(path)):
        raise DataValidationError(f"{path}: file not found")
    accepted, quarantined, blank = [], [], 0
    for ok, row, _ in iter_validated(path, max_chars, max_line_bytes):
        if ok:
            accepted.append(row)
        elif row is None:
            blank += 1
        else:
            quarantined.append(row)
    report = FileReport(file=str(path), rows=len(accepted) + len(quarantined), accepted=len(accepted),
                        quarantined=len(quarantined), blank_lines=blank,
                        reasons=dict(Counter(q["reason"] for q in quarantined)))
    return accepted, quarantined, report


def data_inputs(cfg: DataConfig) -> list[tuple[str, str]]:
    """(split, file) of every input file, in the order the stages keep: train specs, test, replay."""
    # An empty test_path means the data came without a test file (dedup.split_test_fraction can carve one out).
    specs = [("train", p) for p in cfg.train_paths] + ([("test", cfg.test_path)] if cfg.test_path else [])
    if cfg.replay_path:
        specs.append(("replay", cfg.replay_path))
    return [(split, path) for split, spec in specs for path in expand_inputs(spec, cfg.allowed_roots)]


class ValidatedInput(BaseModel):
    """One input file, validated: its accepted records in shards, its rejected rows, its report."""

    split: str
    shards: list[Shard]
    quarantine: str
    report: FileReport


def validate_input(index: int, split: str, path: str, max_chars: int, max_line_bytes: int, shard_rows: int,
                   out_dir: Path) -> ValidatedInput:
    """Validate one input file, streaming: accepted records into shards of ``shard_rows``, rejected rows into its
    quarantine part (the map unit of the validate stage; ``index`` orders the outputs). It takes the two limits, not
    the DataConfig: the stage cache hashes every file its inputs name, and the config names all input files."""
    if not _exists(str(path)):
        raise DataValidationError(f"{path}: file not found")
    parts = Path(out_dir) / "shards"
    accepted = blank = 0
    reasons: Counter = Counter()
    with ShardWriter(parts / f"{split}-{index:04d}", shard_rows) as shards, \
            JsonlWriter(parts / f"{split}-{index:04d}.quarantine.jsonl") as quarantine:
        for ok, row, _ in iter_validated(path, max_chars, max_line_bytes):
            if ok:
                shards.write(row)
                accepted += 1
            elif row is None:
                blank += 1
            else:
                quarantine.write(row)
                reasons[row["reason"]] += 1
        rejected = quarantine.close()
        written = shards.close()
    report = FileReport(file=str(path), rows=accepted + rejected.rows, accepted=accepted, quarantined=rejected.rows,
                        blank_lines=blank, reasons=dict(reasons))
    log.info("validated %s: %d rows, %d accepted, %d quarantined %s",
             path, report.rows, report.accepted, report.quarantined, report.reasons or "")
    return ValidatedInput(split=split, shards=written, quarantine=rejected.path, report=report)


def merge_validated(cfg: DataConfig, inputs: list[ValidatedInput], out_dir: Path) -> ValidatedData:
    """Join the inputs' outputs in input order into ``<split>.jsonl``, ``quarantine.jsonl`` and ``report.json``;
    raise if a split rejects too much."""
    out_dir = Path(out_dir)
    splits = ("train", "test", "replay")
    paths = {split: out_dir / f"{split}.jsonl" for split in splits}
    for split in splits:
        concat_files(paths[split], [s.path for i in inputs if i.split == split for s in i.shards])
    quarantine_path = concat_files(out_dir / "quarantine.jsonl", [i.quarantine for i in inputs])
    reports = [i.report for i in inputs]
    report = write_json(out_dir / "report.json", [r.model_dump() for r in reports])

    for split in splits:
        split_inputs = [i for i in inputs if i.split == split]
        rows = sum(i.report.rows for i in split_inputs)
        rejected = sum(i.report.quarantined for i in split_inputs)
        share = rejected / rows if rows else 1.0
        if split_inputs and (share > cfg.max_rejected_fraction or rows == rejected):
            bad = [i for i in split_inputs if i.report.quarantined or not i.report.rows]
            first = next((json.loads(line)["message"] for i in bad if i.report.quarantined
                          for line in open(i.quarantine, encoding="utf-8")), "no rows at all")
            raise DataValidationError(
                f"{split} data: {rejected} of {rows} rows rejected ({share:.0%}, limit {cfg.max_rejected_fraction:.0%}); "
                f"reasons per file { {i.report.file: i.report.reasons for i in bad} }; first: {first}; every rejected "
                f"row is in {quarantine_path}"
            )
    return ValidatedData(train=str(paths["train"]), test=str(paths["test"]),
                         replay=str(paths["replay"]) if cfg.replay_path else None,
                         quarantine=str(quarantine_path), reports=reports, report=str(report),
                         shards={split: [s for i in inputs if i.split == split for s in i.shards] for split in splits})


def validate(cfg: DataConfig, out_dir: Path, shard_rows: int = DEFAULT_SHARD_ROWS) -> ValidatedData:
    """The whole stage in this process: validate train, test and replay files into ``out_dir``; raise if a split
    rejects too much. (The flow maps validate_input over the files instead: flows/data.py.)"""
    inputs = [validate_input(k, split, path, cfg.max_field_chars, cfg.max_line_bytes, shard_rows, out_dir)
              for k, (split, path) in enumerate(data_inputs(cfg))]
    return merge_validated(cfg, inputs, out_dir)


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="validate-file", task_run_name="validate {split} {path}", **stage_options())
def validate_input_task(index: int, split: str, path: str, max_chars: int, max_line_bytes: int, shard_rows: int,
                        run_dir: str) -> ValidatedInput:
    """Validate and normalize one input file; quarantine what is wrong."""
    return validate_input(index, split, path, max_chars, max_line_bytes, shard_rows, Path(run_dir) / "validate")


@task(name="validate", task_run_name="validate: merge {cfg.train_paths}", **stage_options())
def validate_merge_task(cfg: DataConfig, inputs: list[ValidatedInput], run_dir: str) -> ValidatedData:
    """Join the validated files; fail when too much was rejected."""
    result = merge_validated(cfg, inputs, Path(run_dir) / "validate")
    create_table_artifact(
        key="validation-report",
        table=[{**r.model_dump(exclude={"reasons"}), "reasons": json.dumps(r.reasons)} for r in result.reports],
        description=f"Rows accepted and quarantined per input file. Quarantine: {result.quarantine}",
    )
    return result
