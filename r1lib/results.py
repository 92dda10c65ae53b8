"""Stage results at rest: a JSON format that cannot run code, and a store that reads nothing else.

Prefect persists each stage's result so that a retried run starts at the failed stage. Its default format is
cloudpickle, and a stored record names its own serializer, so a record replaced by someone who can write the result
folder would run code when the next run looks it up. Here:

- ``StageResultSerializer`` (type ``r1-json``) writes JSON: pydantic models as their class's dotted name plus their
  JSON dump, lists, tuples, string-keyed dicts, paths and plain values. It reads back only models whose class is
  defined in this project's own packages (``tasks``, ``flows``, ``r1lib``) and is a pydantic model; an exception
  comes back as a ``StoredError`` carrying its text, never as the class the record names.
- ``untrusted_reason`` reads a stored record's raw bytes and says why it must not be read: the stage cache
  (r1lib/policy.py) calls it before Prefect looks a key up, and passes over a record that was not written with
  ``r1-json`` (a pickle record, a hand-made JSON one naming another serializer, bytes that are not a record),
  logging its path; the stage runs again and writes its result under the next key.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path, PurePath
from typing import Any, Literal

from prefect.results import get_default_result_storage
from prefect.serializers import Serializer
from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

SERIALIZER_TYPE = "r1-json"
TRUSTED_PACKAGES = ("tasks", "flows", "r1lib")


class StoredError(RuntimeError):
    """An exception read back from a stored record: its original type's name and text, never its class."""


class UntrustedRecord(ValueError):
    """A stored record this project did not write, or one that names a class outside its own packages."""


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, BaseModel):
        cls = type(value)
        return {"__model__": f"{cls.__module__}:{cls.__qualname__}", "data": value.model_dump(mode="json")}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"__dict__": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, PurePath):
        return {"__path__": str(value)}
    if isinstance(value, BaseException):
        return {"__error__": f"{type(value).__module__}.{type(value).__qualname__}", "message": str(value)}
    raise TypeError(f"a stage result of type {type(value).__name__} has no JSON form (r1lib/results.py)")


def trusted_model(name: str) -> type[BaseModel]:
    """The pydantic model class ``module:QualName`` names, imported only from this project's own packages."""
    module, _, qualname = name.partition(":")
    if not qualname or module.split(".")[0] not in TRUSTED_PACKAGES:
        raise UntrustedRecord(f"a stored result names {name!r}, outside this project's packages {TRUSTED_PACKAGES}")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise UntrustedRecord(f"a stored result names {name!r}, which is not a result model")
    return obj


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__model__" in value:
        return trusted_model(value["__model__"]).model_validate(value["data"])
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if "__dict__" in value:
        return {k: _decode(v) for k, v in value["__dict__"].items()}
    if "__path__" in value:
        return Path(value["__path__"])
    if "__error__" in value:
        return StoredError(f"{value['__error__']}: {value.get('message', '')}")
    raise UntrustedRecord(f"a stored result holds an untagged object with keys {sorted(value)[:5]}")


class StageResultSerializer(Serializer):
    """Stage results as JSON that names only this project's own result models (module docstring)."""

    type: Literal["r1-json"] = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(_encode(obj), ensure_ascii=False).encode("utf-8")

    def loads(self, blob: bytes) -> Any:
        return _decode(json.loads(blob.decode("utf-8")))


def check_record(content: bytes, where: str) -> bytes:
    """``content`` when it is a Prefect result record written with ``r1-json``; else UntrustedRecord naming ``where``.
    Only the record's metadata is read here; the result inside is decoded later by StageResultSerializer."""
    try:
        record = json.loads(content)
        serializer = record["metadata"]["serializer"]["type"]
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        raise UntrustedRecord(f"{where}: not a result record of this pipeline") from None
    if serializer != SERIALIZER_TYPE:
        raise UntrustedRecord(f"{where}: a result record written with {serializer!r}, not {SERIALIZER_TYPE!r}")
    return content


def untrusted_reason(store: Any, key: str) -> str | None:
    """Why the record stored under ``key`` must not be read (``check_record``'s message), or None when it is absent
    or was written with ``r1-json``. Reads the raw bytes only: nothing in the record is decoded here."""
    if not hasattr(store, "result_storage"):  # not a Prefect ResultStore (a test's stand-in): nothing stored to read
        return None
    metadata_storage = getattr(store, "metadata_storage", None)
    storage = metadata_storage or store.result_storage or get_default_result_storage(_sync=True)
    try:
        content = storage.read_path(key, _sync=True)
    except (ValueError, OSError):  # absent: Prefect's local storage raises ValueError for a missing path
        return None
    if content is None:
        return None
    if metadata_storage is not None:
        content = json.dumps({"metadata": json.loads(content)}).encode() if content.strip() else b""
    try:
        check_record(content, f"{getattr(storage, 'basepath', storage)}/{key}")
    except UntrustedRecord as exc:
        return str(exc)
    return None
