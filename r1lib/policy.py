"""Prefect policy shared by every stage's @task: caching that survives the flow run, retries, timeouts.

Caching. Every stage's result is persisted and keyed on (a) its inputs, (b) its own source code and (c) the content of
the files and directories its inputs declare as ``InputPath`` (``FILES``; stages take paths, so hashing the path string
alone would miss a changed file). The flow-run id is *not* part of the key, so a retried flow run (``prefect flow-run
retry``, the UI's Retry) or a new run with the same inputs finds every finished stage in the cache and starts at the
failed one; the train stage itself resumes from its last complete checkpoint. A cached result whose ``InputPath``
outputs (what the next stages read) have since vanished (someone cleaned ``runs/``) is not trusted: the stage runs
again.

Results are JSON that names only this project's result models (r1lib/results.py), and a stored record written in
any other format is passed over before Prefect reads it: a replaced record cannot run code. They live in
``$R1_RESULT_STORAGE`` when set (a block slug such as ``s3-bucket/r1-results``, or a local folder),
else in Prefect's default ``$PREFECT_HOME/storage``; a worker pool whose runs must share the cache needs shared storage.

Retries. Transient failures (I/O, network, a killed process, CUDA hiccups) retry with exponential backoff and jitter;
permanent ones (``is_permanent``: ``r1lib.errors.PermanentError`` for bad data, bad config, a refused model or a broken
export; a chat template the sandbox stops; a full disk) fail at once. Long stages get timeouts.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.tasks import exponential_backoff

from r1lib.errors import PermanentError
from r1lib.paths import declared_paths, is_url, parameter_types
from r1lib.results import StageResultSerializer, untrusted_reason

# Files above this size are fingerprinted by (size, mtime) instead of their bytes: hashing a 15 GB model per stage
# would cost minutes, and such files are only ever replaced whole (atomic renames), which changes their mtime.
CONTENT_HASH_LIMIT = 64 * 2**20
_MAX_CACHE_GENERATIONS = 20


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run (its lines reach the UI), else this project's logger."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("r1-finetune")


def is_permanent(exc: BaseException) -> bool:
    """Whether a retry of the same inputs must fail the same way: bad data or configuration (PermanentError), a
    refused model (pickle weights, code that is not trusted: PermanentError too), a chat template the sandbox stops
    (any Jinja template error), a full disk (ENOSPC/EDQUOT anywhere in the exception's chain or a child's output),
    an invalid value (pydantic). Everything else (I/O hiccups, network, a killed process) is worth a retry."""
    from jinja2.exceptions import TemplateError
    from pydantic import ValidationError

    from r1lib.io import is_disk_full

    chain, seen = exc, 0
    while chain is not None and seen < 20:
        if isinstance(chain, (PermanentError, TemplateError, ValidationError)):
            return True
        chain, seen = chain.__cause__ or chain.__context__, seen + 1
    return is_disk_full(exc)


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (I/O, network, a killed process); fail permanent ones at once (is_permanent)."""
    try:
        state.result()
    except Exception as exc:
        return not is_permanent(exc)
    return True


# --- file fingerprints --------------------------------------------------------------------------------------------


def _file_digest(path: Path, digest: hashlib._Hash) -> None:
    stat = path.stat()
    digest.update(f"{stat.st_size}:".encode())
    if stat.st_size > CONTENT_HASH_LIMIT:
        digest.update(f"mtime:{stat.st_mtime_ns}".encode())
        return
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)


def _derived(path: Path) -> bool:
    """Files that readers add to a directory without changing its content: ``datasets`` writes its ``map``/``filter``
    caches (``cache-<hash>.arrow``) beside a dataset loaded from disk (the train stage does), half-written temporary
    files, Python bytecode."""
    name = path.name
    return (
        (name.startswith("cache-") and name.endswith(".arrow"))
        or ".tmp-" in name
        or name.startswith("tmp")
        or "__pycache__" in path.parts
    )


def path_fingerprint(path: str | Path) -> str | None:
    """sha256 over a file's bytes, or over a directory's relative names and file bytes; None if it does not exist."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _file_digest(path, digest)
    elif path.is_dir():
        for child in sorted(path.rglob("*")):
            if child.is_file() and not _derived(child):
                digest.update(str(child.relative_to(path)).encode() + b"\0")
                _file_digest(child, digest)
    else:
        return None
    return digest.hexdigest()


def inputs_fingerprint(inputs: dict[str, Any], types: dict[str, Any]) -> str:
    """One digest over the content of every file or directory that ``types`` (a task's parameter types) declares an
    ``InputPath`` anywhere in the inputs; an ``OutputPath`` is where a stage writes, so only its name counts."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        for where, path, ref in declared_paths(inputs[name], types.get(name, Any), name):
            if not ref.output:
                digest.update(f"{where}:{path}:{path_fingerprint(path)}\n".encode())
    return digest.hexdigest()


def missing_outputs(result: Any, annotation: Any = Any) -> list[str]:
    """The ``InputPath`` files and folders a cached result hands on that no longer exist (where their top folder
    does, so that a hub id is not taken for a missing path). Fields the next stages do not read (a checkpoint the
    trainer rotates, a report) are plain strings and never make a cached result stale."""
    missing = []
    for _, path, ref in declared_paths(result, annotation):
        if ref.output or is_url(path) or os.path.exists(path):
            continue
        if os.path.isabs(path) or Path(Path(path).parts[0]).is_dir():
            missing.append(path)
    return missing


@dataclass
class InputFiles(CachePolicy):
    """Cache-key part: the content of the files and directories the task's inputs point to."""

    exclude: list[str] = field(default_factory=list)

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        inputs = {k: v for k, v in (inputs or {}).items() if k not in self.exclude}
        return inputs_fingerprint(inputs, parameter_types(task_ctx.task.fn))


FILES = InputFiles()


@dataclass
class StageCache(CachePolicy):
    """INPUTS + TASK_SOURCE + FILES, never the flow-run id; skips a cached result whose output files are gone."""

    policy: CachePolicy = field(default_factory=lambda: INPUTS + TASK_SOURCE + FILES)

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        key = self.policy.compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        store = getattr(task_ctx, "result_store", None)
        if key is None or store is None:
            return key
        # A key whose cached result names files that no longer exist is passed over for the next generation.
        result_type = parameter_types(task_ctx.task.fn).get("return", Any)
        for generation in range(_MAX_CACHE_GENERATIONS):
            candidate = key if generation == 0 else f"{key}-g{generation}"
            reason = untrusted_reason(store, candidate)
            if reason:  # never handed to Prefect, whose reader would run the serializer the record names
                stage_logger().warning("passing over a stored result: %s", reason)
                continue
            try:
                if not store.exists(candidate):
                    return candidate
                if not missing_outputs(store.read(candidate).result, result_type):
                    return candidate
            except Exception:  # an unreadable record: let Prefect decide (it recomputes)
                return candidate
        return f"{key}-g{_MAX_CACHE_GENERATIONS}"


STAGE_CACHE = StageCache()


def result_storage() -> str | None:
    """Where stage results persist: ``$R1_RESULT_STORAGE`` (block slug or folder), else Prefect's default."""
    return os.environ.get("R1_RESULT_STORAGE") or None


def stage_options(
    retries: int = 2, timeout_seconds: float | None = None, cache: bool = True, log_prints: bool = True
) -> dict[str, Any]:
    """Keyword arguments for ``@task`` that every stage uses. ``log_prints=False`` for stages whose libraries print
    noise (trl/datasets print bytecode disassembly while training)."""
    options: dict[str, Any] = {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=2),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_unless_permanent,
        "timeout_seconds": timeout_seconds,
        "log_prints": log_prints,
    }
    if cache:
        options.update(cache_policy=STAGE_CACHE, persist_result=True, result_serializer=StageResultSerializer())
        if result_storage():
            options["result_storage"] = result_storage()
    return options
