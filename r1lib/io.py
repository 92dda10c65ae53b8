"""Crash-safe file output: everything is written under a temporary name and renamed into place when complete.

A rename within one filesystem is atomic, so a reader (or a retried task) sees either the old state or the whole new
file, never a half-written one that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_text(path: Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(path: Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def jsonl_line(row: Any) -> bytes:
    """One row as a UTF-8 JSON line, non-ASCII kept as is. orjson is ~5x faster than json.dumps on records (the data
    stages write millions); what it refuses (integers past 64 bits) goes through json."""
    try:
        return orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write rows as JSON lines (UTF-8, non-ASCII kept as is); returns the row count."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for row in rows:
            handle.write(jsonl_line(row))
            count += 1
    return count


def iter_jsonl(path: Path) -> Iterator[dict]:
    """Stream the rows of a JSON lines file (blank lines skipped), parsed by orjson (~2x json.loads). orjson reads an
    integer past 64 bits as a float: for the data stages' record files (whose only integers are line numbers);
    read_jsonl is exact for any file."""
    with open(path, "rb") as handle:
        for line in handle:
            if line.strip():
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:  # what orjson is stricter about (NaN): the standard parser decides
                    yield json.loads(line)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def concat_files(path: Path, parts: Iterable[str | Path]) -> Path:
    """``parts`` joined byte for byte, in the given order, into ``path`` (atomically)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DirectoryBusy(RuntimeError):
    """Another process holds the lock of a directory (e.g. a second run training into the same run directory)."""


@contextlib.contextmanager
def exclusive_dir(path: Path, wait_seconds: float = 0.0) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (a ``.lock`` file inside) while the block runs.

    A second holder waits up to ``wait_seconds`` and then fails with a message naming the process that holds it. The
    lock is a kernel ``flock``: it is released when its holder exits, killed processes included, so it never goes
    stale.
    """
    import fcntl
    import time

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / ".lock"
    handle = open(lock_path, "a+")
    deadline = time.monotonic() + wait_seconds
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise DirectoryBusy(
                        f"{path} is in use by {holder}; wait for it to finish or use another run_name"
                    ) from None
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield path
    finally:
        handle.close()
