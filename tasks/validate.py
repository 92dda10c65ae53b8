"""Stage 1, validate: read the input files, normalize every row into a record, quarantine what is wrong.

Nothing is lost: every input row ends either in the accepted records or in ``quarantine.jsonl`` with its file, line
(or row) number, a reason code, the offending field and the raw text, so accepted + quarantined == rows read. The
stage fails (without retry: a retry cannot fix data) when the rejected share of a file exceeds
``data.max_rejected_fraction``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel

from tasks.config import DataConfig
from tasks.errors import DataValidationError
from tasks.io import write_json, write_jsonl
from tasks.orchestration import stage_options
from tasks.records import RecordError, make_record, normalize

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

    @property
    def rows_in(self) -> int:
        return sum(r.rows for r in self.reports)

    @property
    def quarantined(self) -> int:
        return sum(r.quarantined for r in self.reports)


def iter_raw_rows(path: Path) -> Iterator[tuple[int, str, object]]:
    """Yield (line or row number, raw text, parsed value or the exception that parsing raised), 1-based."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield number, raw.decode("utf-8", errors="backslashreplace"), exc
                    continue
                if not text.strip():
                    yield number, text, None
                    continue
                try:
                    yield number, text.rstrip("\n"), json.loads(text)
                except json.JSONDecodeError as exc:
                    yield number, text.rstrip("\n"), exc
    elif suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = data if isinstance(data, list) else [data]
        for number, row in enumerate(rows, start=1):
            yield number, json.dumps(row, ensure_ascii=False), row
    elif suffix in (".csv", ".parquet"):
        import pandas as pd

        frame = pd.read_csv(path, dtype=str, keep_default_na=False) if suffix == ".csv" else pd.read_parquet(path)
        for number, row in enumerate(frame.to_dict(orient="records"), start=1):
            row = {k: (None if v is None or v != v else v) for k, v in row.items()}  # NaN -> None
            yield number, json.dumps(row, ensure_ascii=False, default=str), row
    else:
        raise DataValidationError(f"{path}: unsupported file type {suffix!r} (use .jsonl, .json, .csv or .parquet)")


def validate_file(path: Path, max_chars: int) -> tuple[list[dict], list[dict], FileReport]:
    """Records and quarantine rows of one file, plus its report."""
    if not path.exists():
        raise DataValidationError(f"{path}: file not found")
    accepted, quarantined, blank = [], [], 0
    for number, raw, parsed in iter_raw_rows(path):
        if parsed is None:
            blank += 1
            continue
        if isinstance(parsed, UnicodeDecodeError):
            reason, field, message = "invalid_utf8", None, f"not valid UTF-8 ({parsed.reason} at byte {parsed.start})"
        elif isinstance(parsed, json.JSONDecodeError):
            reason, field, message = "invalid_json", None, f"not valid JSON ({parsed.msg} at column {parsed.colno})"
        else:
            try:
                accepted.append(make_record(normalize(parsed, max_chars), str(path), number))
                continue
            except RecordError as exc:
                reason, field, message = exc.reason, exc.field, str(exc)
        quarantined.append({"file": str(path), "line": number, "reason": reason, "field": field,
                            "message": f"{path}:{number}: {message}", "raw": raw})
    report = FileReport(file=str(path), rows=len(accepted) + len(quarantined), accepted=len(accepted),
                        quarantined=len(quarantined), blank_lines=blank,
                        reasons=dict(Counter(q["reason"] for q in quarantined)))
    return accepted, quarantined, report


def validate(cfg: DataConfig, out_dir: Path) -> ValidatedData:
    """Validate train, test and replay files into ``out_dir``; raise if a file rejects too much."""
    out_dir = Path(out_dir)
    quarantine: list[dict] = []
    reports: list[FileReport] = []
    outputs: dict[str, list[dict]] = {"train": [], "test": [], "replay": []}
    inputs = [("train", p) for p in cfg.train_paths] + [("test", cfg.test_path)]
    if cfg.replay_path:
        inputs.append(("replay", cfg.replay_path))
    for split, path in inputs:
        records, rejected, report = validate_file(Path(path), cfg.max_field_chars)
        outputs[split].extend(records)
        quarantine.extend(rejected)
        reports.append(report)
        log.info("validated %s: %d rows, %d accepted, %d quarantined %s",
                 path, report.rows, report.accepted, report.quarantined, report.reasons or "")
    paths = {split: out_dir / f"{split}.jsonl" for split in outputs}
    for split, rows in outputs.items():
        write_jsonl(paths[split], rows)
    quarantine_path = out_dir / "quarantine.jsonl"
    write_jsonl(quarantine_path, quarantine)
    write_json(out_dir / "report.json", [r.model_dump() for r in reports])

    for split in outputs:
        split_reports = [r for r, (s, _) in zip(reports, inputs) if s == split]
        rows = sum(r.rows for r in split_reports)
        rejected = sum(r.quarantined for r in split_reports)
        share = rejected / rows if rows else 1.0
        if split_reports and (share > cfg.max_rejected_fraction or rows == rejected):
            files = {r.file: r.reasons for r in split_reports if r.quarantined or not r.rows}
            first = next((q["message"] for q in quarantine if q["file"] in files), "no rows at all")
            raise DataValidationError(
                f"{split} data: {rejected} of {rows} rows rejected ({share:.0%}, limit {cfg.max_rejected_fraction:.0%}); "
                f"reasons per file {files}; first: {first}; every rejected row is in {quarantine_path}"
            )
    return ValidatedData(train=str(paths["train"]), test=str(paths["test"]),
                         replay=str(paths["replay"]) if cfg.replay_path else None,
                         quarantine=str(quarantine_path), reports=reports)


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="validate", task_run_name="validate {cfg.train_paths}", **stage_options())
def validate_task(cfg: DataConfig, run_dir: str) -> ValidatedData:
    """Validate and normalize the input data; quarantine what is wrong."""
    result = validate(cfg, Path(run_dir) / "validate")
    create_table_artifact(
        key="validation-report",
        table=[{**r.model_dump(exclude={"reasons"}), "reasons": json.dumps(r.reasons)} for r in result.reports],
        description=f"Rows accepted and quarantined per input file. Quarantine: {result.quarantine}",
    )
    return result
