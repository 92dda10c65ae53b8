"""The files an input spec names (a file, a folder, a glob; local or any fsspec URL), and opening them, within the
allowed roots (``data.allowed_roots``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from r1lib.config import DataConfig
from r1lib.errors import DataValidationError
from r1lib.paths import confine, is_url, open_confined, resolve_roots

SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
_GLOB_CHARS = "*?["
DATA_ROOTS = DataConfig.model_fields["allowed_roots"].default
ROOTS_FIELD = "data.allowed_roots"


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


def distinct_inputs(specs: Sequence[tuple[str, str]], allowed_roots: Sequence[str] = DATA_ROOTS) -> None:
    """Refuse (ConfigError) data inputs that name one file twice however they spell it: ``a.jsonl`` and
    ``./a.jsonl``, a link and its target, a file and a folder or glob that holds it. ``specs``: (field, spec) pairs;
    local files are compared as resolved (``os.path.realpath``), URLs as written; a spec that matches nothing or
    lies outside the roots is left to the stage that reads it."""
    import os

    from r1lib.errors import ConfigError

    seen: dict[str, tuple[str, str]] = {}
    for field, spec in specs:
        try:
            files = expand_inputs(spec, allowed_roots)
        except (DataValidationError, ConfigError, OSError):
            continue
        for path in files:
            key = path if is_url(path) else os.path.realpath(os.path.expanduser(path.removeprefix("file://")))
            if key in seen and seen[key] != (field, spec):
                first = seen[key]
                raise ConfigError(
                    f"{field}: {spec!r} names the file {key!r}, which {first[0]} {first[1]!r} names already; "
                    "each data file may be read once (drop one of them)"
                )
            seen[key] = (field, spec)


def path_exists(path: str) -> bool:
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(path)
    return fs.exists(root)


def open_input(path: str, allowed_roots: Sequence[str] | None) -> BinaryIO:
    """A data file opened for binary reading. A local file is opened by r1lib.paths.open_confined, so the roots
    hold for the file actually read (resolved from ``allowed_roots``; None: the caller vouches for the path, as the
    parser tests do); a remote URL through fsspec, after its prefix is checked against the roots."""
    import fsspec

    roots = resolve_roots(allowed_roots) if allowed_roots is not None else None
    if not is_url(path):
        return open_confined(path, roots, ROOTS_FIELD)
    if roots is not None:
        confine(path, roots, ROOTS_FIELD)
    return fsspec.open(path, "rb").open()
