"""Crash-safe file output: everything is written under a temporary name and renamed into place when complete.

A rename within one filesystem is atomic, so a reader (or a retried task) sees either the old state or the whole new
file, never a half-written one that looks complete. A temporary name says which host and process writes it
(``.<name>.tmp-<host>-<pid>-<random>``), so that the next writer of the same path removes what a killed one (kill -9,
a lost node's process on this host) left behind, and never what a live one is writing. A full disk while writing is
a ``DiskFull`` naming the file and the free space.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from r1lib.errors import ConfigError, DiskFull, PermanentError

log = logging.getLogger(__name__)
HOST = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:64] or "host"
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


def _tmp_sibling(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale_siblings(path: Path) -> list[Path]:
    """Remove the temporary files and folders that killed writers of ``path`` on this host left beside it (a
    truncated ``tokenizer.json`` in a half-written staging folder, a partial GGUF); a live writer's are kept, and so
    are another host's (their process cannot be checked from here)."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.tmp-*"):
        host, _, rest = tmp.name[len(path.name) + 6 :].rpartition("-")[0].rpartition("-")
        if host != HOST or not rest.isdigit() or _writer_alive(int(rest)):
            continue
        log.warning("removing %s, left by an interrupted writer of %s", tmp, path)
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception's chain, or in the text a child process printed."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(exc) for text in DISK_FULL_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def free_space(path: Path) -> str:
    """Free bytes on the filesystem that holds ``path`` (its nearest existing folder), in words."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:,.1f} MiB free on the filesystem of {folder}"


def disk_full(
    path: Path, exc: BaseException, fix: str = "free some space or point the run elsewhere (runs_dir)"
) -> DiskFull:
    """The DiskFull error for a write of ``path`` that failed with ``exc``; ``fix``: the setting that moves it."""
    return DiskFull(
        errno.ENOSPC,
        f"No space left on device writing {path} ({free_space(path)}); {fix}, then retry "
        f"({type(exc).__name__}: {str(exc)[-300:]})",
    )


@contextlib.contextmanager
def _disk_full_names(path: Path) -> Iterator[None]:
    try:
        yield
    except DiskFull:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full(path, exc) from exc
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block finishes. What killed
    writers of ``path`` left is removed first; a full disk is a DiskFull naming ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(path)
    tmp = _tmp_sibling(path)
    try:
        with _disk_full_names(path):
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
    """Yield a temporary directory beside ``path``; it replaces ``path`` only if the block finishes. What killed
    writers of ``path`` left is removed first; a full disk is a DiskFull naming ``path``. A symlink at ``path`` is
    replaced as ``atomic_path`` replaces one, never followed: what it points at is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_siblings(path)
    tmp = _tmp_sibling(path)
    tmp.mkdir()
    try:
        with _disk_full_names(path):
            yield tmp
            if path.is_symlink():
                log.warning("replacing the symlink %s (to %s) with the folder written here", path, os.readlink(path))
                path.unlink()
            elif path.exists():
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


class FileStamp(NamedTuple):
    """What ``stat`` said of a file when it was hashed. A file whose stamp is still the same holds the bytes that were
    hashed: any write, truncation, rename onto it or ``utime`` changes its ctime, which no user can set back."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# A filesystem's clock can be coarse (a kernel tick; seconds on some): a change within that long after the hashing could
# keep the ctime the stamp recorded, so a stamp counts only when the file's last change is older than this at the end.
STAMP_SETTLED_NS = 1_000_000_000


def sha256_stamped(path: Path) -> tuple[str, FileStamp | None]:
    """``sha256_file`` and the file's stamp, or None where the file changed while it was hashed or too recently for
    its ctime to tell a later change (``STAMP_SETTLED_NS``): then ``unchanged_since`` is never true and it is hashed
    again."""
    before = FileStamp.of(path)
    digest = sha256_file(path)
    after = FileStamp.of(path)
    settled = before == after and after.ctime_ns < time.time_ns() - STAMP_SETTLED_NS
    return digest, after if settled else None


def unchanged_since(path: Path, stamp: FileStamp | tuple | None) -> bool:
    """Whether ``path`` is provably the file ``stamp`` was taken of (same inode, size, mtime and ctime)."""
    if stamp is None:
        return False
    try:
        return FileStamp.of(path) == FileStamp(*stamp)
    except OSError:
        return False


class DirectoryBusy(RuntimeError):
    """Another process holds the lock of a directory (e.g. a second run training into the same run directory)."""


PROBE_GRACE = 1.0  # seconds a run waits for its folder's lock even when it waits for no holder


def flock_within(handle, seconds: float, poll: float = 0.05) -> bool:
    """Take an exclusive ``flock`` on the open file ``handle``, trying every ``poll`` seconds for up to ``seconds``
    (0: one try); False when another holder kept it that long. Other errors of ``flock`` propagate."""
    import fcntl

    deadline = time.monotonic() + seconds
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)


@contextlib.contextmanager
def exclusive_dir(path: Path, wait_seconds: float = 0.0) -> Iterator[Path]:
    """Hold an exclusive lock on ``path`` (a ``.lock`` file inside) while the block runs.

    A second holder waits up to ``wait_seconds`` (at least ``PROBE_GRACE``) and then fails with a message naming the
    process that holds it. The lock is a kernel ``flock``: it is released when its holder exits, killed processes
    included, so it never goes stale.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / ".lock"
    try:  # never through a symlink: the holder's pid is written into the file, which a link's target would lose
        handle = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644), "a+")
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise PermanentError(f"{lock_path} is a symlink, not a lock file of this folder: remove it") from exc
    try:
        # at least a moment: another run's export probes this lock for an instant (r1lib/export/scratch.py: run_ended)
        try:
            taken = flock_within(handle, max(wait_seconds, PROBE_GRACE))
        except OSError as exc:  # a filesystem without flock (some NFS, Lustre mounts): one run per folder unknowable
            raise ConfigError(
                f"cannot lock {lock_path} ({exc.strerror or exc}): set runs_dir to a folder on a filesystem with flock "
                "(a local disk)"
            ) from exc
        if not taken:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise DirectoryBusy(f"{path} is in use by {holder}; wait for it to finish or use another run_name")
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield path
    finally:
        handle.close()
