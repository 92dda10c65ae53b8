"""The smoke test's HF reference hands on two side files (step logits, perplexity rows): a cached reference whose
files are gone is stale for the stage cache, and one whose files changed after it wrote them is refused by name
(r1lib/export/hf_reference.py: HFReference.check_files; bench/attack5 finding 10)."""

from __future__ import annotations

import numpy as np
import pytest

from r1lib.errors import ExportCheckError
from r1lib.export.hf_reference import HFReference
from r1lib.io import sha256_file
from r1lib.policy import missing_outputs


def reference(tmp_path) -> HFReference:
    logits, rows = tmp_path / "hf_logits.npy", tmp_path / "perplexity_rows.json"
    np.save(logits, np.array([[0.0, 5.0, 1.0]], np.float32))
    rows.write_text('[{"input_ids": [1, 2], "labels": [-100, 2]}]')
    return HFReference(
        merged_dir=str(tmp_path), prompt="p", tokens=[1], logits=str(logits), perplexity=3.0, rows=1,
        rows_path=str(rows), digests={str(p): sha256_file(p) for p in (logits, rows)},
    )  # fmt: skip


def test_files_as_written_pass(tmp_path):
    reference(tmp_path).check_files()


def test_rewritten_logits_are_refused_by_name(tmp_path):
    ref = reference(tmp_path)
    np.save(ref.logits, np.array([[5.0, 5.0, 5.0]], np.float32))  # a near tie everywhere
    with pytest.raises(ExportCheckError, match="hf_logits.npy: .* changed after it was written"):
        ref.check_files()


def test_deleted_files_make_the_cached_reference_stale_and_are_named(tmp_path):
    ref = reference(tmp_path)
    (tmp_path / "perplexity_rows.json").unlink()
    assert missing_outputs(ref, HFReference) == [ref.rows_path]  # the stage cache computes it again
    with pytest.raises(ExportCheckError, match="perplexity_rows.json: .* is gone"):
        ref.check_files()


def test_a_reference_without_recorded_digests_is_refused(tmp_path):
    ref = reference(tmp_path).model_copy(update={"digests": {}})
    with pytest.raises(ExportCheckError, match="changed after it was written"):
        ref.check_files()
