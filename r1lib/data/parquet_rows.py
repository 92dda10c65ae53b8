"""Parquet rows in bounded memory: a Parquet file is compressed and dictionary-encoded, so a few hundred bytes can
decode to gigabytes (one 1 MB string in a dictionary, referenced by 2,000 rows). parquet_rows reads the footer
first and refuses, naming the file:
  - a column named twice (pyarrow would read the last one: JSON and CSV refuse the same);
  - pages that decompress to more than ``max(max_line_bytes, MAX_EXPANSION x`` the file's size ``)``;
then reads its strings as dictionaries (nothing is expanded before it is measured), in batches of about
``max_line_bytes`` of pages, measures each row's decoded size from the dictionaries' lengths, and refuses a row over
``max_line_bytes`` or a file whose rows decode to more than that same expansion bound, before the rows are turned
into Python objects, in slices of at most ``max_line_bytes``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

from r1lib.data.lines import dump_raw
from r1lib.errors import DataValidationError

MAX_EXPANSION = 1000  # decoded bytes per byte of file, beyond data.max_line_bytes
MAX_BATCH_ROWS = 8192


def _sizes(array):
    """Each element's decoded size in bytes (a numpy int64 array), without decoding dictionaries or strings."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind, n = array.type, len(array)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if pa.types.is_dictionary(kind):
        values = _sizes(array.dictionary)
        indices = pc.fill_null(array.indices, 0).to_numpy(zero_copy_only=False).astype(np.int64)
        out = values[indices] if len(values) else np.zeros(n, dtype=np.int64)
    elif (
        pa.types.is_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_large_binary(kind)
    ):
        out = pc.fill_null(pc.binary_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        children = _sizes(array.values)
        total = np.concatenate([[0], np.cumsum(children)])
        offsets = array.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        out = total[offsets[1:]] - total[offsets[:-1]] + 8
    elif pa.types.is_struct(kind):
        out = np.full(n, 8, dtype=np.int64)
        for field in array.flatten():
            out += _sizes(field)
    else:
        width = getattr(kind, "bit_width", 64) if pa.types.is_primitive(kind) else 8 * max(1, array.nbytes // n)
        out = np.full(n, max(1, width // 8), dtype=np.int64)
    if array.null_count:
        out = np.where(array.is_null().to_numpy(zero_copy_only=False), 0, out)
    return out


def _byte_array_paths(schema) -> list[str]:
    return [schema.column(i).path for i in range(len(schema)) if schema.column(i).physical_type in ("BYTE_ARRAY",)]


def parquet_rows(name: str, handle: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, str, object]]:
    """(row number, raw text, row) of each row of a Parquet file (see the module for what is refused)."""
    import numpy as np
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    handle.seek(0, io.SEEK_END)
    file_bytes = handle.tell()
    handle.seek(0)
    budget = max(max_line_bytes, MAX_EXPANSION * file_bytes)
    number = 0
    try:
        footer = pq.ParquetFile(handle)
        names = footer.schema_arrow.names
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise DataValidationError(
                f"{name}: names the column(s) {twice} more than once; which value a row means cannot be known "
                "(a reader would keep the last): rename or drop them"
            )
        meta = footer.metadata
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        stored = sum(g.total_byte_size for g in groups)
        if stored > budget:
            raise DataValidationError(
                f"{name}: its pages decompress to {stored:,} bytes, over {budget:,} ({MAX_EXPANSION} times the "
                f"file's {file_bytes:,} bytes, or data.max_line_bytes); not read (a compression bomb?)"
            )
        parquet = pq.ParquetFile(handle, read_dictionary=_byte_array_paths(footer.schema))
        decoded = 0
        for index, group in enumerate(groups):
            per_row = max(1, group.total_byte_size // max(1, group.num_rows))
            batch_rows = max(1, min(MAX_BATCH_ROWS, max_line_bytes // per_row))
            for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[index]):
                sizes = np.zeros(batch.num_rows, dtype=np.int64)
                for column in batch.columns:
                    sizes += _sizes(column)
                over = np.flatnonzero(sizes > max_line_bytes)
                if len(over):
                    raise DataValidationError(
                        f"{name}: row {number + int(over[0]) + 1} decodes to {int(sizes[over[0]]):,} bytes, over "
                        f"data.max_line_bytes ({max_line_bytes:,}); not read"
                    )
                decoded += int(sizes.sum())
                if decoded > budget:
                    raise DataValidationError(
                        f"{name}: its rows decode to more than {budget:,} bytes ({MAX_EXPANSION} times the file's "
                        f"{file_bytes:,} bytes, or data.max_line_bytes) by row {number + batch.num_rows}: a "
                        "dictionary or compression bomb, not read further"
                    )
                # into Python in slices of at most max_line_bytes (most batches: one slice)
                marks = np.arange(1, 1 + sizes.sum() // max_line_bytes) * max_line_bytes
                ends = np.searchsorted(np.cumsum(sizes), marks)
                cuts = [0, *sorted({int(e) for e in ends if 0 < e < batch.num_rows}), batch.num_rows]
                for start, end in zip(cuts, cuts[1:]):
                    for row in batch.slice(start, end - start).to_pylist():
                        number += 1
                        row = {k: v for k, v in row.items() if v is not None}  # absent columns of a mixed file
                        yield number, dump_raw(row), row
    except (ArrowException, OSError) as exc:  # not Parquet, truncated, a corrupt page: the same bytes again
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the OS failed to read it (a retry may help), not pyarrow to parse it
        raise DataValidationError(
            f"{name}: not a readable Parquet file after row {number} ({exc}); rewrite it, or convert it to JSON lines"
        ) from None
