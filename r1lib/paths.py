"""Where the pipeline may read from: dataset paths and local model directories stay under configured roots.

Roots are ``data.allowed_roots`` and ``model.allowed_roots`` (r1lib/config.py): local folders, or remote URL prefixes
such as ``s3://my-bucket/``. A local path is resolved before it is compared (``~``, ``..`` and every symlink, by
``os.path.realpath``), so neither ``../../etc`` nor a symlink inside a root that points elsewhere gets out; relative
paths and roots are relative to the working directory, as every configured path is. A remote URL is allowed only
under a listed prefix and never with a ``..`` segment. Archives (.zip, .tar, .tar.gz, .tgz, .7z ... and fsspec's
``zip://`` / ``tar://``) are refused, never opened: extracting one writes wherever its member names say.

Besides the data inputs, every other file the configuration names for reading (augmentation templates, debias lists,
the lm_eval folder, the embedded model's pre-training texts) must lie under ``data.allowed_roots`` as well:
``check_config_paths``, which the flows call before any stage runs.

Two placeholders keep the defaults free of machine-specific paths: ``{project}`` (this checkout) and ``{hf_cache}``
(the Hugging Face hub cache: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``). A violation raises ``PathNotAllowed``, a
permanent error (no retry) that names the path, what it resolved to and the roots.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from r1lib.errors import PathNotAllowed

if TYPE_CHECKING:
    from r1lib.config import PipelineConfig

PROJECT_DIR = Path(__file__).resolve().parent.parent
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".7z", ".rar")
ARCHIVE_PROTOCOLS = frozenset({"zip", "tar", "libarchive"})  # fsspec filesystems that read inside an archive


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
            raise PathNotAllowed(f"{path!r} is an archive; archives are never read or extracted (their member names "
                                 f"can point anywhere): extract it yourself under one of {field} and name the files")


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
        raise PathNotAllowed(f"{path!r} is not under a URL prefix listed in {field} {list(roots)}; add its prefix "
                             "(e.g. 's3://my-bucket/') to allow it")
    real = os.path.realpath(os.path.expanduser(path.removeprefix("file://")))
    if any(not is_url(root) and _under(real, root) for root in roots):
        return path
    raise PathNotAllowed(f"{path!r} resolves to {real!r}, outside {field} {list(roots)}")


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
            raise PathNotAllowed(f"{index}: not valid JSON ({exc}), so the files it names cannot be checked")
        weight_map = manifest.get("weight_map") if isinstance(manifest, dict) else None
        if not isinstance(weight_map, dict):
            raise PathNotAllowed(f"{index}: no weight_map object, so the files it names cannot be checked")
        for name in sorted(set(map(str, weight_map.values()))):
            if not name or os.path.isabs(name) or ".." in Path(name).parts or "\\" in name:
                raise PathNotAllowed(f"{index}: weight_map entry {name!r} leaves the model directory {model_dir} "
                                     "(entries must be plain relative file names)")
            confine(os.path.join(model_dir, name), roots, field)


def config_paths(config: PipelineConfig) -> list[tuple[str, str]]:
    """(field, path) of every file or folder the configuration names for the run to read, other than the model:
    the data inputs as written (files, folders or globs; validate confines what they expand to), the augmentation
    templates, the debias lists when debiasing is on, the lm_eval folder when lm_eval tasks are asked for, and the
    embedded model's pre-training texts when the embedded model is the one used."""
    from r1lib.config import EMBEDDED

    data, named = config.data, []
    named += [(f"data.train_paths[{i}]", path) for i, path in enumerate(data.train_paths)]
    named += [("data.test_path", data.test_path), ("data.replay_path", data.replay_path),
              ("augment.templates_path", config.augment.templates_path)]
    if config.debias.enabled:
        named += [("debias.blocklist_path", config.debias.blocklist_path),
                  ("debias.term_pairs_path", config.debias.term_pairs_path)]
    if config.evaluate.lm_eval_tasks:
        named.append(("evaluate.lm_eval_path", config.evaluate.lm_eval_path))
    if config.model.name_or_path == EMBEDDED:
        embedded = config.model.embedded
        named.append(("model.embedded.corpus_path", embedded.corpus_path))
        named += [(f"model.embedded.chat_paths[{i}]", path) for i, path in enumerate(embedded.chat_paths)]
        named += [(f"model.embedded.vocab_paths[{i}]", path) for i, path in enumerate(embedded.vocab_paths)]
    return [(name, path) for name, path in named if path]


def check_config_paths(config: PipelineConfig) -> None:
    """Every path ``config_paths`` lists lies under ``data.allowed_roots`` (and, for the lm_eval folder, every
    symlink inside it); else PathNotAllowed naming the configuration field. Reads no file, so a flow calls it first
    and a bad path fails before any stage does work."""
    roots, field = resolve_roots(config.data.allowed_roots), "data.allowed_roots"
    for name, path in config_paths(config):
        try:
            confine(path, roots, field)
            if name == "evaluate.lm_eval_path" and not is_url(path) and os.path.isdir(path):
                check_links(path, roots, field)
        except PathNotAllowed as exc:
            raise PathNotAllowed(f"{name}: {exc}") from None
