"""Where a run's held-out rows come from: the user's own test file, a stable hash split of the user's rows, or (the
demo only) the shipped sample's test file.

A user who names their training files but no test file of their own must not be scored on the shipped sample
(``data/sample/test.jsonl``): those numbers would say nothing about their data. ``held_out_source`` decides once,
before any stage works (the preflight calls it, so ``data.holdout_fraction=0`` is refused at once), and the data
stages run on ``held_out_configs``: no test file, and dedup's stable split carving ``data.holdout_fraction`` of the
rows out (tasks/dedup.py; a row's fate depends on its prompt alone, so adding rows never moves an old one).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import unicodedata
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel

from r1lib.config import DataConfig, DedupConfig
from r1lib.errors import ConfigError
from r1lib.paths import PROJECT_DIR, is_url

SHIPPED_SAMPLE = PROJECT_DIR / "data" / "sample"


class HeldOutSource(BaseModel):
    """Where the held-out rows come from: ``test_file`` (``data.test_path``, the user's), ``split`` (``fraction`` of
    the training rows, by a stable hash of each prompt salted with ``salt``) or ``shipped_sample`` (the demo: the
    training files and the test file are the shipped sample's)."""

    kind: Literal["test_file", "split", "shipped_sample"]
    test_path: str = ""  # data.test_path as configured (for a split: the file that is not used, if any)
    fraction: float = 0.0
    salt: str = ""

    @property
    def label(self) -> str:
        """A few words naming the held-out set (a promotion decision's "on ...")."""
        if self.kind == "split":
            return f"{self.fraction:.0%} of the training rows held out by a stable hash (data.holdout_fraction)"
        return self.test_path

    def describe(self, rows: int | None = None) -> str:
        """One line for the run summary: where the held-out rows came from."""
        count = f"{rows} rows: " if rows is not None else ""
        if self.kind == "test_file":
            return f"{count}data.test_path {self.test_path}"
        if self.kind == "shipped_sample":
            return f"{count}the shipped sample's test file {self.test_path} (the training files are the sample's too)"
        unused = f"; data.test_path {self.test_path} (the shipped sample) not used" if self.test_path else ""
        return (
            f"{count}{self.fraction:.0%} of your training rows, picked by a stable hash of each prompt "
            f"(data.holdout_fraction; dedup.split_salt {self.salt!r}), never trained on{unused}; "
            "to score on a file of yours instead set data.test_path"
        )


# A file this large (read or unpacked) cannot be mostly the sample's rows (~500 kB in all) without repeating them.
_MAX_EXAMINED_BYTES = 16 * 2**20


def _row_hash(line: str) -> str | None:
    """A JSON line's content hash, blind to how it was saved (key order, spacing, escapes, line end, NFC); None when
    the line holds no JSON object."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    text = json.dumps(row, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(unicodedata.normalize("NFC", text).encode("utf-8", "surrogatepass")).hexdigest()


def _rows(data: bytes) -> list[str]:
    """The non-blank lines of a file's bytes (a UTF-8 BOM dropped); [] when they are not UTF-8 text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return []
    return [line for line in text.splitlines() if line.strip()]


@functools.lru_cache(maxsize=1)
def _sample_rows() -> frozenset[str]:
    """The content hashes of every row of the shipped sample's JSON-lines files."""
    found = (_row_hash(line) for f in SHIPPED_SAMPLE.rglob("*.jsonl") if f.is_file() for line in _rows(f.read_bytes()))
    return frozenset(h for h in found if h)


def _read_bounded(path: Path) -> bytes | None:
    """A file's bytes, gzip unpacked; None when it (or its unpacked text) is over _MAX_EXAMINED_BYTES."""
    if path.stat().st_size > _MAX_EXAMINED_BYTES:
        return None
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as unpacked:
                data = unpacked.read(_MAX_EXAMINED_BYTES + 1)
        except (OSError, EOFError):
            return None
    return data if len(data) <= _MAX_EXAMINED_BYTES else None


def is_sample_content(path: Path) -> bool:
    """Whether most of a file's rows (over half of those that parse as JSON objects) are rows of the shipped sample,
    compared by content: a copy re-saved with CRLF line ends, a trailing blank line, its rows shuffled or cut, or
    gzip-compressed is still the sample (bench/attack5 finding 11)."""
    data = _read_bounded(path)
    hashes = [h for h in (_row_hash(line) for line in _rows(data or b"")) if h]
    sample = _sample_rows()
    return bool(hashes) and sum(h in sample for h in hashes) * 2 > len(hashes)


def is_shipped_sample(spec: str) -> bool:
    """Whether an input spec names the shipped sample data (``data/sample/``): a file or folder under it however the
    path is written (relative, ``..``, a symlink, a ``file://`` URL), or a copy of one of its files elsewhere (mostly
    its rows, however saved: ``is_sample_content``), so a copied sample is never taken for the user's own data."""
    if spec.startswith("file://"):
        spec = unquote(urlparse(spec).path)
    if not spec or is_url(spec):
        return False
    path = (Path(spec) if Path(spec).is_absolute() else Path.cwd() / spec).resolve()
    if path.is_relative_to(SHIPPED_SAMPLE.resolve()):
        return True
    try:
        return path.is_file() and is_sample_content(path)  # a byte-for-byte copy too: every row is a sample row
    except OSError:
        return False


def held_out_source(data: DataConfig, dedup: DedupConfig) -> HeldOutSource:
    """Where this configuration's held-out rows come from. A test file of the user's is used as it is; with the
    user's training files and no test file of theirs (``data.test_path`` empty, or the shipped sample's), the share
    ``dedup.split_test_fraction`` (when set) or ``data.holdout_fraction`` of their rows is held out; with that share
    0 the run is refused (ConfigError naming data.test_path): scoring the user's model on the shipped sample would
    report numbers about data it was never meant for."""
    test = data.test_path or ""
    if test and not is_shipped_sample(test):
        return HeldOutSource(kind="test_file", test_path=test)
    if test and all(is_shipped_sample(p) for p in data.train_paths):
        return HeldOutSource(kind="shipped_sample", test_path=test)
    fraction = dedup.split_test_fraction or data.holdout_fraction
    if fraction <= 0:
        given = f"data.test_path is the shipped sample's {test}" if test else "data.test_path is empty"
        raise ConfigError(
            f"no held-out rows of your data: {given} and data.holdout_fraction is 0. Set data.test_path to a test "
            "file of yours, or data.holdout_fraction (e.g. 0.1) to hold out that share of your training rows"
        )
    return HeldOutSource(kind="split", test_path=test, fraction=fraction, salt=dedup.split_salt)


def held_out_configs(data: DataConfig, dedup: DedupConfig) -> tuple[DataConfig, DedupConfig, HeldOutSource]:
    """The data and dedup sections the data stages run on, and the held-out source: for a split, no test file is
    read and dedup's stable split holds out the share (with dedup.enabled off too, then removing nothing)."""
    source = held_out_source(data, dedup)
    if source.kind != "split":
        return data, dedup, source
    split = {"split_test_fraction": source.fraction}
    if not dedup.enabled:  # dedup off still holds the rows out; it removes no duplicate or leak
        split |= {"enabled": True, "exact": False, "near": False, "leakage": False}
    return data.model_copy(update={"test_path": ""}), dedup.model_copy(update=split), source
