"""GGUF files and the llama.cpp child processes that make and read them.

Conversion, quantization and the smoke test run llama.cpp in child processes: a crash inside it fails the step
instead of the worker. A child is a bare ``python -c`` with the functions it needs (``child_code``), so it starts in
about a second instead of importing the pipeline, and it never reaches a model hub (``offline_env``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel

from r1lib.paths import InputPath

FULL_PRECISION = ("F16", "BF16", "F32")  # GGUF types that are not quantized


class GGUFFile(BaseModel):
    path: InputPath
    type: str
    bytes: int
    tokenizer_pre: str | None = None


def offline_env() -> dict:
    """The environment for export children: no hub access, whatever the caller's settings."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def gguf_metadata(path: Path, key: str) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(str(path)).get_field(key)
    return None if field is None else field.contents()


def check_gguf(path: Path) -> None:
    """Fail unless ``path`` parses as a complete GGUF (header, metadata and every tensor's data in the file)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        if not reader.tensors:
            raise ValueError("no tensors")
    except Exception as exc:  # noqa: BLE001 - any parse failure means a broken file
        raise RuntimeError(f"{path} is not a complete GGUF: {exc}") from exc


def child_code(functions: list, call: str, preamble: str = "") -> str:
    """Python source for ``python -c``: the given module-level functions and a final call, importing nothing of the
    pipeline, so a child starts in about a second instead of loading Prefect."""
    import inspect

    header = "import json, logging, math, os, sys, time\nfrom pathlib import Path\n" + preamble + "\n"
    return header + "\n\n".join(inspect.getsource(f) for f in functions) + f"\n\n{call}\n"
