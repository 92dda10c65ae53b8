"""Tokenized rows (input_ids, labels) as Arrow: the table of a chunk, and a ``datasets.load_from_disk`` folder made
of Arrow files without rewriting them (the tokenize stage's building blocks)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from r1lib.io import atomic_dir


def token_features():
    """The features of a tokenized row."""
    from datasets import Features, List, Value

    # What Dataset.from_list infers for these rows (datasets stores input_ids as int32).
    return Features({"input_ids": List(Value("int32")), "labels": List(Value("int64"))})


def rows_table(rows: list[dict]):
    """The rows as Arrow list columns, built from flat numpy buffers (5x faster than pa.array on lists of lists)."""
    import itertools

    import numpy as np
    import pyarrow as pa

    lengths = np.fromiter((len(r["input_ids"]) for r in rows), dtype=np.int32, count=len(rows))
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths, dtype=np.int32)]).astype(np.int32))
    columns = {}
    for name, dtype in (("input_ids", np.int32), ("labels", np.int64)):
        flat = np.fromiter(itertools.chain.from_iterable(r[name] for r in rows), dtype=dtype, count=int(lengths.sum()))
        columns[name] = pa.ListArray.from_arrays(offsets, pa.array(flat))
    return pa.table(columns)


def write_dataset(arrows: list[str], fingerprint: str, dataset_dir: Path) -> None:
    """A ``datasets.load_from_disk`` directory whose data files are ``arrows``, in order, hard-linked (copied across
    filesystems) instead of rewritten: what ``save_to_disk`` writes (the same state.json and dataset_info.json),
    without reading the rows again. The fingerprint comes from the content, so equal data gives an equal folder."""
    import shutil

    from datasets import DatasetInfo
    from datasets.utils.py_utils import asdict

    names = [f"data-{k:05d}-of-{len(arrows):05d}.arrow" for k in range(len(arrows))]
    state = {
        "_data_files": [{"filename": name} for name in names],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": None,
    }
    info = asdict(DatasetInfo(features=token_features()))
    with atomic_dir(dataset_dir) as tmp:
        for source, name in zip(arrows, names):
            try:
                os.link(source, tmp / name)
            except OSError:
                shutil.copyfile(source, tmp / name)
        (tmp / "state.json").write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        (tmp / "dataset_info.json").write_text(
            json.dumps({k: info[k] for k in sorted(info)}, indent=2), encoding="utf-8"
        )


def check_dropped(
    rows_in: int,
    dropped: int,
    longest: int,
    origins: dict[str, int],
    cfg,
    name: str,
    quarantine: str,
    row_origins: dict[str, int] | None = None,
) -> None:
    """Rows dropped as too long (``origins``: how many of them are original rows and which augmentations;
    ``row_origins``: the same of every row in): warned about, and past ``cfg.max_dropped_fraction`` (or when none is
    left) a failure that names the settings that fix it. ``cfg``: the TokenizeConfig."""
    from r1lib.errors import DataValidationError

    if not dropped:
        return
    share = dropped / max(rows_in, 1)
    added = {k: n for k, n in origins.items() if k != "original"}  # rows the augment stage added, not the user's
    why = (
        "their prompt alone is longer, which truncation cannot keep"
        if cfg.truncation == "truncate"
        else "they were dropped"
    )
    added_in = {k: n for k, n in (row_origins or {}).items() if k != "original"}
    if added:
        counted = (
            f"; counted after augmentation: {dropped - sum(added.values())} original rows and augmented copies {added}"
        )
    elif added_in:
        counted = (
            f"; the dropped rows are all original; augmentation added {sum(added_in.values())} of the {rows_in} rows "
            f"{added_in}"
        )
    else:
        counted = ""
    message = (
        f"{name}: {dropped} of {rows_in} rows ({share:.0%}{counted}) are longer than tokenize.max_seq_length="
        f"{cfg.max_seq_length} tokens (the longest {longest}): {why} (tokenize.truncation={cfg.truncation}); "
        f"they are in {quarantine}"
    )
    if dropped == rows_in or share > cfg.max_dropped_fraction:
        raise DataValidationError(
            f"{message}. That is over tokenize.max_dropped_fraction={cfg.max_dropped_fraction:g}"
            + (" and leaves no row" if dropped == rows_in else "")
            + f": raise tokenize.max_seq_length (e.g. --set tokenize.max_seq_length={-(-longest // 256) * 256})"
            + (" or set tokenize.truncation=truncate (keeps the rows, cut to the limit)" * (cfg.truncation == "drop"))
        )
    import logging

    logging.getLogger("tasks.tokenize").warning(message)


def contains_run(seq: list[int], sub: list[int]) -> bool:
    """Whether ``sub`` occurs in ``seq`` as a contiguous run (the empty run occurs everywhere)."""
    n = len(sub)
    if n == 0:
        return True
    first, i = sub[0], 0
    try:
        while True:
            i = seq.index(first, i)
            if seq[i : i + n] == sub:
                return True
            i += 1
    except ValueError:
        return False
