"""Stage 1, validate: read the input files, normalize every row into a record, quarantine what is wrong.

Every input row ends either in the accepted records (shards of ``runner.shard_rows``) or in ``quarantine.jsonl`` with
its file, row, reason code, field and raw text: accepted + quarantined == rows read. A split whose rejected share
passes ``data.max_rejected_fraction`` fails the stage (no retry). Formats, reason codes and limits:
docs/data-stages.md."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from r1lib.config import DataConfig
from r1lib.data.inputs import expand_inputs, path_exists
from r1lib.data.json_rows import DuplicateKey
from r1lib.data.lines import BLANK, LineTooLong, safe_text
from r1lib.data.preference import is_preference, normalize_preference, preference_record
from r1lib.data.readers import MAX_LINE_BYTES, iter_raw_rows
from r1lib.data.records import RecordError, check_schema, location, make_record
from r1lib.data.row_formats import normalize
from r1lib.data.row_rules import RowRules
from r1lib.data.shards import DEFAULT_SHARD_ROWS, JsonlWriter, Shard, ShardWriter
from r1lib.errors import DataValidationError
from r1lib.io import concat_files, sha256_file, write_json
from r1lib.paths import InputPath, OutputPath
from r1lib.policy import stage_options
from r1lib.stage import StageResult
from r1lib.stages import DataFingerprint

log = logging.getLogger(__name__)


class FileReport(BaseModel):
    file: str
    rows: int
    accepted: int
    quarantined: int
    blank_lines: int
    reasons: dict[str, int]


class ValidatedData(StageResult):
    train: InputPath
    test: InputPath
    replay: InputPath | None
    quarantine: str
    reports: list[FileReport]
    # The same records as train/test/replay, in shards of runner.shard_rows: what the data stages map over.
    shards: dict[str, list[Shard]] = {}
    report: str | None = None  # report.json
    fingerprint: DataFingerprint | None = None  # sha256 of every local input file (the model card shows it)

    def summary(self) -> dict:
        per_file = {
            r.file: {"accepted": r.accepted, "quarantined": r.quarantined, "reasons": r.reasons} for r in self.reports
        }
        return {
            "data": {
                "rows_read": self.rows_in,
                "quarantined": self.quarantined,
                "quarantine": self.quarantine,
                "per_file": per_file,
            }
        }

    def summary_lines(self) -> list[tuple[str, str]]:
        return [("data", f"{self.rows_in} rows read, {self.quarantined} quarantined -> {self.quarantine}")]

    @property
    def rows_in(self) -> int:
        return sum(r.rows for r in self.reports)

    @property
    def quarantined(self) -> int:
        return sum(r.quarantined for r in self.reports)


def iter_validated(
    path: str | Path,
    max_chars: int,
    max_line_bytes: int = MAX_LINE_BYTES,
    rules: RowRules | None = None,
    allowed_roots: list[str] | None = None,
) -> Iterator[tuple[bool, dict | None, int]]:
    """Stream one file: (True, record, number) for each accepted row, (False, quarantine row, number) for each
    rejected one, (False, None, number) for a blank line (counted, not quarantined). ``rules``: placeholders and the
    tools policy (RowRules; its max_chars gives way to ``max_chars``). ``allowed_roots`` are checked against the file
    actually opened (r1lib/data/inputs.py open_input)."""
    name = str(path)
    rules = (rules or RowRules()).model_copy(update={"max_chars": max_chars})
    for number, raw, parsed in iter_raw_rows(path, max_line_bytes, allowed_roots):
        if parsed is BLANK:
            yield False, None, number
            continue
        extra = {}
        if isinstance(parsed, LineTooLong):
            reason, field = "line_too_long", None
            message = (
                f"{parsed.length} bytes from byte {parsed.offset}, over data.max_line_bytes ({max_line_bytes}); "
                f"not read, sha256 {parsed.sha256}"
            )
            extra = {"offset": parsed.offset, "bytes": parsed.length, "sha256": parsed.sha256}
        elif isinstance(parsed, UnicodeDecodeError):
            reason, field, message = "invalid_utf8", None, f"not valid UTF-8 ({parsed.reason} at byte {parsed.start})"
        elif isinstance(parsed, DuplicateKey):
            reason, field = parsed.reason, parsed.keys[0]
            message = f"{parsed.msg}; which value the row means cannot be known: keep one"
        elif isinstance(parsed, json.JSONDecodeError):
            reason, field, message = "invalid_json", None, f"not valid JSON ({parsed.msg} at column {parsed.colno})"
        elif isinstance(parsed, csv.Error):
            reason, field = getattr(parsed, "reason", "invalid_csv"), None  # csv_desync: a stretch of broken quoting
            message = f"not a valid CSV record ({parsed})"
        else:
            try:
                record = make_record(normalize(parsed, rules=rules, file=name), name, number)
                check_schema(record)
                yield True, record, number
                continue
            except RecordError as exc:
                reason, field, message = exc.reason, exc.field, str(exc)
                if reason == "preference_data":
                    accepted, refusal, extra = preference_row(parsed, rules, name, number)
                    if accepted is not None:
                        yield True, accepted, number
                        continue
                    reason, field, message = refusal or (reason, field, message)
        yield (
            False,
            {
                "file": name,
                "line": number,
                "reason": reason,
                "field": field,
                "message": safe_text(f"{location(name, number)}: {message}"),
                "raw": safe_text(raw),
                **extra,
            },
            number,
        )


def preference_row(parsed: dict, rules: RowRules, name: str, number: int) -> tuple[dict | None, tuple | None, dict]:
    """(record, None, {}) for a preference row that ``rules.preference_method`` trains on; else (None, (reason,
    field, message) or None to keep the preference_data refusal, extra quarantine fields: the normalized row)."""
    try:
        row = normalize_preference(parsed, rules.max_chars)
    except RecordError as exc:  # a broken pair: its own reason in a preference run
        return None, (exc.reason, exc.field, str(exc)) if rules.preference_method else None, {}
    if not rules.preference_method:
        return None, None, {"preference": row}
    if row["kind"] in rules.preference_kinds:
        return preference_record(row, name, number), None, {}
    message = (
        f"{row['shape']}: one answer labelled desirable or not, and train.method={rules.preference_method} trains "
        "on pairs (chosen and rejected); train it with --set train.method=kto"
    )
    return None, ("preference_label", "label", message), {"preference": row}


def misplaced(split: str, record: dict, rules: RowRules | None) -> dict | None:
    """The quarantine row of an accepted record its split cannot use in a preference run, else None: an SFT row in
    the training data (DPO/ORPO/KTO train on preference rows only; an SFT row has nothing to prefer its answer to),
    a preference row in the replay data (general rows, for forgetting)."""
    method = rules.preference_method if rules else None
    if method is None or split == "test" or (split == "train") != (not is_preference(record)):
        return None
    reason, message = "preference_data", "a preference row in the replay data, which holds general SFT rows"
    if split == "train":
        reason, message = (
            "sft_row",
            (
                f"an SFT row (one answer, nothing to prefer it to) in the training data of a train.method={method} "
                "run, which trains on preference rows only; train it in an SFT run (train.method=sft) and start this "
                "run from its adapter (train.init_adapter), or leave the file out"
            ),
        )
    where = location(record["source"]["file"], record["source"]["line"])
    return {**record["source"], "reason": reason, "field": None, "message": f"{where}: {message}", "record": record}


def validate_file(
    path: str | Path,
    max_chars: int,
    max_line_bytes: int = MAX_LINE_BYTES,
    rules: RowRules | None = None,
    allowed_roots: list[str] | None = None,
) -> tuple[list[dict], list[dict], FileReport]:
    """Records and quarantine rows of one file, plus its report."""
    if not path_exists(str(path)):
        raise DataValidationError(f"{path}: file not found")
    accepted, quarantined, blank = [], [], 0
    for ok, row, _ in iter_validated(path, max_chars, max_line_bytes, rules, allowed_roots):
        if ok:
            accepted.append(row)
        elif row is None:
            blank += 1
        else:
            quarantined.append(row)
    report = FileReport(
        file=str(path),
        rows=len(accepted) + len(quarantined),
        accepted=len(accepted),
        quarantined=len(quarantined),
        blank_lines=blank,
        reasons=dict(Counter(q["reason"] for q in quarantined)),
    )
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
    quarantine: InputPath
    report: FileReport


def validate_input(
    index: int,
    split: str,
    path: str,
    max_chars: int,
    max_line_bytes: int,
    shard_rows: int,
    out_dir: Path,
    allowed_roots: list[str] | None,
    rules: RowRules | None = None,
) -> ValidatedInput:
    """Validate one input file, streaming: accepted records into shards of ``shard_rows``, rejected rows into its
    quarantine part (the map unit of the validate stage; ``index`` orders the outputs). It takes the limits and the
    RowRules, not the DataConfig: the stage cache hashes every file its inputs name, and the config names all input
    files."""
    if not path_exists(str(path)):
        raise DataValidationError(f"{path}: file not found")
    parts = Path(out_dir) / "shards"
    accepted = blank = 0
    reasons: Counter = Counter()
    with (
        ShardWriter(parts / f"{split}-{index:04d}", shard_rows) as shards,
        JsonlWriter(parts / f"{split}-{index:04d}.quarantine.jsonl") as quarantine,
    ):
        for ok, row, _ in iter_validated(path, max_chars, max_line_bytes, rules, allowed_roots):
            if ok and (refused := misplaced(split, row, rules)) is not None:
                ok, row = False, refused
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
    report = FileReport(
        file=str(path),
        rows=accepted + rejected.rows,
        accepted=accepted,
        quarantined=rejected.rows,
        blank_lines=blank,
        reasons=dict(reasons),
    )
    log.info(
        "validated %s: %d rows, %d accepted, %d quarantined %s",
        path,
        report.rows,
        report.accepted,
        report.quarantined,
        report.reasons or "",
    )
    return ValidatedInput(split=split, shards=written, quarantine=rejected.path, report=report)


def _remedy(share: float, limit: float) -> str:
    """What to change when a split rejects too much: the rows, and the limit only where raising it trains the rest."""
    if share >= 1 or limit >= 1:  # nothing would be left to train, or the limit is already at its end
        return (
            "Every row was refused: fix the rows (an unknown_format message holds the data.columns mapping to paste) "
            "or leave the file out"
        )
    return (
        "Fix the rows (or leave the file out); to train on the rest anyway, raise the limit: "
        f"--set data.max_rejected_fraction={min(1, round(share + 0.05, 2)):g}"
    )


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
            first = next(
                (
                    json.loads(line)["message"]
                    for i in bad
                    if i.report.quarantined
                    for line in open(i.quarantine, encoding="utf-8")
                ),
                "no rows at all",
            )
            raise DataValidationError(
                f"{split} data: {rejected} of {rows} rows rejected ({share:.0%}, over "
                f"data.max_rejected_fraction={cfg.max_rejected_fraction:g}); "
                f"reasons per file { {i.report.file: i.report.reasons for i in bad} }; first: {first}; every rejected "
                f"row is in {quarantine_path}. {_remedy(share, cfg.max_rejected_fraction)}"
            )
    return ValidatedData(
        train=str(paths["train"]),
        test=str(paths["test"]),
        replay=str(paths["replay"]) if cfg.replay_path else None,
        quarantine=str(quarantine_path),
        reports=reports,
        report=str(report),
        shards={split: [s for i in inputs if i.split == split for s in i.shards] for split in splits},
        fingerprint=data_fingerprint(cfg),
    )


def data_fingerprint(cfg: DataConfig) -> DataFingerprint:
    """sha256 of every local input file (train, test, replay; a folder or glob as the files it expands to) and one
    sha256 over them all."""
    specs = [*cfg.train_paths, cfg.test_path, *([cfg.replay_path] if cfg.replay_path else [])]
    paths = [path for spec in specs if spec for path in expand_inputs(spec, cfg.allowed_roots)]
    files = {p: sha256_file(Path(p)) for p in paths if Path(p).is_file()}
    combined = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return DataFingerprint(sha256=combined, files=files)


def validate(cfg: DataConfig, out_dir: Path, shard_rows: int = DEFAULT_SHARD_ROWS) -> ValidatedData:
    """The whole stage in this process: validate train, test and replay files into ``out_dir``; raise if a split
    rejects too much. (The flow maps validate_input over the files instead: flows/data.py.)"""
    inputs = [
        validate_input(
            k,
            split,
            path,
            cfg.max_field_chars,
            cfg.max_line_bytes,
            shard_rows,
            out_dir,
            cfg.allowed_roots,
            RowRules.of(cfg),
        )
        for k, (split, path) in enumerate(data_inputs(cfg))
    ]
    return merge_validated(cfg, inputs, out_dir)


def report_table(reports: list[FileReport]) -> tuple[list[dict], str | None]:
    """The validation report as table rows, each file named relative to the folder all of them share (returned, for
    the description; None where they share none): the UI never wraps a cell, so a long data path would push the
    table past the page."""
    try:
        folder = os.path.commonpath([str(Path(r.file).parent) for r in reports]) if reports else None
    except ValueError:  # absolute and relative paths, or none in common
        folder = None
    # Cut as text, never normalized: folder + "/" + name is the path as given (a URL's "//", a "..").
    prefix = f"{folder}/" if folder not in (None, "", "/") else None
    if prefix is None or not all(r.file.startswith(prefix) for r in reports):
        prefix = folder = None
    rows = [
        {
            **r.model_dump(exclude={"reasons"}),
            "file": r.file[len(prefix) :] if prefix else r.file,
            "reasons": json.dumps(r.reasons),
        }
        for r in reports
    ]
    return rows, folder


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="validate-file", task_run_name="validate {split} {path}", **stage_options())
def validate_input_task(
    index: int,
    split: str,
    path: InputPath,
    max_chars: int,
    max_line_bytes: int,
    shard_rows: int,
    out_dir: OutputPath,
    allowed_roots: list[str],
    rules: RowRules | None = None,
) -> ValidatedInput:
    """Validate and normalize one input file; quarantine what is wrong. ``allowed_roots``: data.allowed_roots, held
    against the file actually opened."""
    return validate_input(
        index, split, path, max_chars, max_line_bytes, shard_rows, Path(out_dir), allowed_roots, rules
    )


@task(name="validate", task_run_name="validate: merge {cfg.train_paths}", **stage_options())
def validate_merge_task(cfg: DataConfig, inputs: list[ValidatedInput], out_dir: OutputPath) -> ValidatedData:
    """Join the validated files; fail when too much was rejected."""
    result = merge_validated(cfg, inputs, Path(out_dir))
    table, folder = report_table(result.reports)
    create_table_artifact(
        key="validation-report",
        table=table,
        description=f"Rows accepted and quarantined per input file{f' (under {folder})' if folder else ''}. "
        f"Quarantine: {result.quarantine}",
    )
    return result
