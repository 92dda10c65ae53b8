"""attack5: the HF reference's side files (hf_logits.npy, perplexity_rows.json) are plain strings in HFReference, so
the stage cache neither fingerprints them nor passes over a cached reference whose files are gone or rewritten.

1. missing_outputs (the check that makes the stage cache recompute a result whose files are gone) finds nothing
   missing in a reference whose hf_logits.npy and perplexity_rows.json were deleted: a rerun reuses the cached
   reference, and the smoke test fails on np.load with a bare FileNotFoundError (no file, stage or fix named).
2. The npy rewritten (other logits, same shape) is read as the reference's: nothing records its digest.
Run: python bench/attack5/hf_reference_stale.py"""

import tempfile
from pathlib import Path

import numpy as np

from r1lib.export.hf_reference import HFReference, reference_logits
from r1lib.policy import missing_outputs

out = Path(tempfile.mkdtemp(dir=Path(__file__).parent))
logits, rows = out / "hf_logits.npy", out / "perplexity_rows.json"
np.save(logits, np.array([[0.0, 5.0, 1.0]], np.float32))
rows.write_text('[{"input_ids": [1, 2], "labels": [-100, 2]}]')
ref = HFReference(
    merged_dir=str(out), prompt="p", tokens=[1], logits=str(logits), perplexity=3.0, rows=1, rows_path=str(rows)
)

np.save(logits, np.array([[5.0, 5.0, 5.0]], np.float32))  # 2: rewritten after the reference was computed
print("rewritten npy read as the reference's (a near tie everywhere now):", reference_logits(ref).tolist())

logits.unlink()
rows.unlink()
print("files gone; missing_outputs(reference) =", missing_outputs(ref, HFReference), "(cache would reuse it)")
try:
    reference_logits(ref)
except Exception as exc:  # noqa: BLE001
    print("smoke test's read of the reused reference:", type(exc).__name__, str(exc)[:120])
out.rmdir()
