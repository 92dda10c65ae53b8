"""Shards: the unit of work of the data stages' Prefect task maps (flows/data.py).

A shard is a JSON lines file of at most ``runner.shard_rows`` records. Shards are cut in input order (input file,
then row) and every stage's outputs are concatenated in shard order, so the result does not depend on which worker
ran which shard, or when: the default runner and a Dask or Ray cluster write the same bytes. Inside a shard, stages
stream in chunks of ``CHUNK`` rows, so a worker's memory does not grow with the shard size.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from r1lib.config import RunnerConfig
from r1lib.errors import DiskFull
from r1lib.io import _tmp_sibling, disk_full, is_disk_full, jsonl_line
from r1lib.paths import InputPath

DEFAULT_SHARD_ROWS = RunnerConfig.model_fields["shard_rows"].default
CHUNK = 2_000  # rows a stage holds at once inside a shard (x ~5 after augmentation and counterfactuals)


class Shard(BaseModel):
    path: InputPath
    rows: int

    @classmethod
    def of(cls, path: str | Path) -> Shard:
        """A whole JSON lines file as one shard (its non-blank lines counted)."""
        with open(path, "rb") as handle:
            return cls(path=str(path), rows=sum(1 for line in handle if line.strip()))


def chunked(items: Iterable[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class JsonlWriter:
    """Rows appended to a JSON lines file that appears (renamed into place) only on ``close()``: a crashed task
    leaves no half shard that looks whole."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = _tmp_sibling(self.path)
        self._handle: IO[bytes] | None = open(self._tmp, "wb")
        self.rows = 0

    def write(self, row: dict) -> None:
        self._handle.write(jsonl_line(row))
        self.rows += 1

    def write_many(self, rows: list[dict]) -> None:
        self._handle.writelines([jsonl_line(row) for row in rows])
        self.rows += len(rows)

    def close(self) -> Shard:
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        self._handle = None
        os.replace(self._tmp, self.path)
        return Shard(path=str(self.path), rows=self.rows)

    def abort(self) -> None:
        """Drop the partial file. Its buffered rows are discarded with it: on a full disk the final flush fails
        again, and that second error must not hide the first."""
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
            self._handle = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            full_disk_names(self.path, exc)


class ShardWriter:
    """Rows split into consecutive shard files ``<prefix>-0000.jsonl``, ``<prefix>-0001.jsonl`` ... of at most
    ``shard_rows`` rows each (none for no rows)."""

    def __init__(self, prefix: str | Path, shard_rows: int):
        self.prefix, self.shard_rows = Path(prefix), shard_rows
        self.shards: list[Shard] = []
        self._current: JsonlWriter | None = None

    def write(self, row: dict) -> None:
        if self._current is None:
            self._current = JsonlWriter(f"{self.prefix}-{len(self.shards):04d}.jsonl")
        self._current.write(row)
        if self._current.rows >= self.shard_rows:
            self.shards.append(self._current.close())
            self._current = None

    def close(self) -> list[Shard]:
        if self._current is not None:
            self.shards.append(self._current.close())
            self._current = None
        return self.shards

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._current is not None:
            self._current.abort()
            full_disk_names(self._current.path, exc)


def full_disk_names(path: Path, exc: BaseException | None) -> None:
    """Raise the DiskFull naming ``path`` and the free space when ``exc`` is a bare out-of-space error."""
    if exc is not None and not isinstance(exc, DiskFull) and is_disk_full(exc):
        raise disk_full(path, exc) from exc
