"""Where the pipeline may read from: dataset paths and local model directories stay under configured roots.

Roots are ``data.allowed_roots`` and ``model.allowed_roots`` (r1lib/config/): local folders, or remote URL prefixes
such as ``s3://my-bucket/``. A local path is resolved before it is compared (``~``, ``..`` and every symlink, by
``os.path.realpath``), so neither ``../../etc`` nor a symlink inside a root that points elsewhere gets out; relative
paths and roots are relative to the working directory, as every configured path is. A remote URL is allowed only
under a listed prefix and never with a ``..`` segment. Archives (.zip, .tar, .tar.gz, .tgz, .7z ... and fsspec's
``zip://`` / ``tar://``) are refused, never opened: extracting one writes wherever its member names say.

Which strings are paths is declared, never guessed: a configuration field, a task parameter or a result field that
names a file or folder to read is typed ``InputPath``; one that names where a stage writes is ``OutputPath``.
``declared_paths`` finds them in any value by its type, and that one walk decides both what must lie under the roots
(every ``InputPath`` of the configuration: r1lib/preflight.py, run before any stage) and
what a stage's cache key hashes (r1lib/policy.py).

Two placeholders keep the defaults free of machine-specific paths: ``{project}`` (this checkout) and ``{hf_cache}``
(the Hugging Face hub cache: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``). A violation raises ``PathNotAllowed``, a
permanent error (no retry) that names the path, what it resolved to and the roots.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, BinaryIO
from urllib.parse import unquote

from pydantic import AfterValidator, BaseModel

from r1lib.errors import PathNotAllowed

PROJECT_DIR = Path(__file__).resolve().parent.parent
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".7z", ".rar")
ARCHIVE_PROTOCOLS = frozenset({"zip", "tar", "libarchive"})  # fsspec filesystems that read inside an archive


@dataclass(frozen=True)
class PathRef:
    """Marks a ``str`` as naming a file or folder; ``output``: a place a stage writes, not something it reads."""

    output: bool = False


def path_text(value: str) -> str:
    """A path is text a filesystem can take: no NUL or other control character (a NUL makes every OS call fail,
    a newline hides in logs), not only spaces, at most 4096 characters. The empty string stays: it means "none"
    where a field allows that (``data.test_path``)."""
    if len(value) > 4096:
        raise ValueError(f"a path of {len(value)} characters; at most 4096")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"{value!r} holds a control character (NUL, newline, tab ...); not a usable path")
    if value and not value.strip():
        raise ValueError(f"{value!r} is only spaces; not a usable path")
    return value


InputPath = Annotated[str, PathRef(), AfterValidator(path_text)]
OutputPath = Annotated[str, PathRef(output=True), AfterValidator(path_text)]


def declared_paths(value: Any, annotation: Any = Any, name: str = "") -> list[tuple[str, str, PathRef]]:
    """(dotted name, path, its PathRef) of every string that ``annotation`` (or, inside pydantic models, a field's
    type) declares a path, at any depth of models, lists, tuples and dicts."""
    found: list[tuple[str, str, PathRef]] = []
    _walk(value, annotation, name, found)
    return found


def _walk(value: Any, annotation: Any, name: str, found: list) -> None:
    if value is None:
        return
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *meta = typing.get_args(annotation)
        ref = next((m for m in meta if isinstance(m, PathRef)), None)
        if ref is None:
            _walk(value, base, name, found)
        elif isinstance(value, (str, Path)) and str(value):
            found.append((name, str(value), ref))
        return
    if isinstance(value, BaseModel):
        for field, info in type(value).model_fields.items():
            _walk(getattr(value, field), info.rebuild_annotation(), f"{name}.{field}" if name else field, found)
    elif origin in (typing.Union, types.UnionType):
        arg = next((a for a in typing.get_args(annotation) if _accepts(a, value)), Any)
        _walk(value, arg, name, found)
    elif isinstance(value, (list, tuple, set, frozenset)):
        args = typing.get_args(annotation)
        for i, item in enumerate(value):
            fixed = origin is tuple and args and args[-1] is not Ellipsis
            _walk(
                item,
                (args[i] if i < len(args) else Any) if fixed else (args[0] if args else Any),
                f"{name}[{i}]",
                found,
            )
    elif isinstance(value, dict):
        args = typing.get_args(annotation)
        for key, item in value.items():
            _walk(item, args[1] if len(args) == 2 else Any, f"{name}.{key}" if name else str(key), found)


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether ``value`` can be of the union member ``annotation`` (to walk it with the right type)."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if annotation is type(None):
        return value is None
    try:
        return isinstance(value, typing.get_origin(annotation) or annotation)
    except TypeError:  # Any, Literal, ...
        return True


def parameter_types(fn: Any) -> dict[str, Any]:
    """The type of each parameter (and ``return``) of ``fn``, with their Annotated metadata."""
    return typing.get_type_hints(fn, include_extras=True)


def is_url(path: str) -> bool:
    """A remote fsspec URL (``s3://``, ``memory://``, chained ``a::b``); ``file://`` counts as a local path."""
    return ("://" in path or "::" in path) and not path.startswith("file://")


def hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def resolve_roots(roots: Iterable[str]) -> list[str]:
    """The roots as they apply on this machine: placeholders filled in, local ones absolute and symlink-free."""
    resolved = []
    for root in roots:
        root = root.replace("{project}", str(PROJECT_DIR)).replace("{hf_cache}", hf_cache_dir())
        resolved.append(root if is_url(root) else os.path.realpath(os.path.expanduser(root.removeprefix("file://"))))
    return resolved


def refuse_archive(path: str, field: str) -> None:
    """Raise PathNotAllowed for an archive, or a path that reads inside one (``zip://member::s3://b/a.zip``)."""
    for part in path.split("::"):
        protocol, sep, rest = part.partition("://")
        name = (rest if sep else part).split("?")[0].lower()
        if (sep and protocol.lower() in ARCHIVE_PROTOCOLS) or name.endswith(ARCHIVE_SUFFIXES):
            raise PathNotAllowed(
                f"{path!r} is an archive; archives are never read or extracted (their member names "
                f"can point anywhere): extract it yourself under one of {field} and name the files"
            )


def _under(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _under_prefix(url: str, prefix: str) -> bool:
    """``s3://bucket/`` covers ``s3://bucket/x`` but not ``s3://bucket-2/x``; ``memory://`` covers all of memory."""
    if prefix.endswith("://"):
        return url.startswith(prefix)
    prefix = prefix.rstrip("/")
    return url == prefix or url.startswith(prefix + "/")


def confine(path: str | Path, roots: Sequence[str], field: str) -> str:
    """``path`` (unchanged) when it lies under one of ``roots`` (from resolve_roots); else PathNotAllowed.

    ``field`` names the configuration field that lists the roots, for the message."""
    path = str(path)
    refuse_archive(path, field)
    if is_url(path):
        if ".." in unquote(path).replace("::", "/").split("/"):
            raise PathNotAllowed(f"{path!r} has a '..' segment; {field} {list(roots)}")
        if any(is_url(root) and _under_prefix(path, root) for root in roots):
            return path
        raise PathNotAllowed(
            f"{path!r} is not under a URL prefix listed in {field} {list(roots)}; add its prefix "
            "(e.g. 's3://my-bucket/') to allow it"
        )
    real = os.path.realpath(os.path.expanduser(path.removeprefix("file://")))
    if any(not is_url(root) and _under(real, root) for root in roots):
        return path
    raise PathNotAllowed(f"{path!r} resolves to {real!r}, outside {field} {list(roots)}")


def opened_path(fd: int) -> str | None:
    """The real path of the file an open descriptor refers to, as the kernel knows it (no name is looked up again),
    or None where the platform cannot tell."""
    if os.path.isdir("/proc/self/fd"):
        try:
            return os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return None
    if sys.platform == "darwin":
        import fcntl

        try:
            return os.fsdecode(fcntl.fcntl(fd, 50, b"\0" * 1024).rstrip(b"\0"))  # F_GETPATH
        except OSError:
            return None
    return None


def open_confined(path: str | Path, roots: Sequence[str] | None, field: str = "data.allowed_roots") -> BinaryIO:
    """Open a local file for binary reading such that the roots check holds for the file actually read, not for the
    name checked earlier: the descriptor's own real path (``/proc/self/fd``) must lie under ``roots``, so a file
    swapped for a symlink (or a folder on its path swapped for one) after ``confine`` passed is refused here, and
    once open the file cannot be swapped. Only regular files (no FIFO that blocks, no device). ``roots`` None: the
    caller has no roots to apply (tests of the parsers on files they made); the regular-file check still holds."""
    name = str(path).removeprefix("file://")
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(name, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PathNotAllowed(f"{str(path)!r} is not a regular file (a FIFO, device or folder): not read")
        if roots is not None:
            real = opened_path(fd)
            if real is None:  # no descriptor path here: the name resolved now must be the file that is open
                real = os.path.realpath(name)
                now = os.stat(real)
                if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
                    raise PathNotAllowed(f"{str(path)!r} changed while it was being opened: not read")
            if not any(not is_url(root) and _under(real, root) for root in roots):
                raise PathNotAllowed(
                    f"{str(path)!r} was opened as {real!r}, outside {field} {list(roots)} (a symlink or folder "
                    "swapped in after the path was checked?): not read"
                )
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_links(folder: str | Path, roots: Sequence[str], field: str) -> None:
    """Every symlink inside ``folder`` (files and folders, at any depth) resolves under the roots."""
    for parent, dirs, files in os.walk(str(folder)):  # does not descend into linked folders: they are checked here
        for name in dirs + files:
            entry = os.path.join(parent, name)
            if os.path.islink(entry):
                confine(entry, roots, field)


def check_model_dir(model_dir: str | Path, roots: Sequence[str], field: str = "model.allowed_roots") -> None:
    """A local model directory reads nothing outside the roots: every symlink in it (files and folders, at any depth)
    resolves under them, and every file a safetensors index (``*.index.json`` weight_map) names is a plain relative
    name inside the directory. The directory itself is checked by the caller (confine)."""
    model_dir = str(model_dir)
    check_links(model_dir, roots, field)
    for index in sorted(Path(model_dir).glob("*.index.json")):
        try:
            manifest = json.loads(index.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise PathNotAllowed(f"{index}: not valid JSON ({exc}), so the files it names cannot be checked") from None
        weight_map = manifest.get("weight_map") if isinstance(manifest, dict) else None
        if not isinstance(weight_map, dict):
            raise PathNotAllowed(f"{index}: no weight_map object, so the files it names cannot be checked")
        for name in sorted(set(map(str, weight_map.values()))):
            if not name or os.path.isabs(name) or ".." in Path(name).parts or "\\" in name:
                raise PathNotAllowed(
                    f"{index}: weight_map entry {name!r} leaves the model directory {model_dir} "
                    "(entries must be plain relative file names)"
                )
            confine(os.path.join(model_dir, name), roots, field)
