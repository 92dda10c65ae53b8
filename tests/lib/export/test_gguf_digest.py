"""Each GGUF's sha256 is recorded when the export writes it (convert, quantize) and checked before the smoke test and
in the model card: a GGUF swapped after the run fails both, naming the file. Fast: the converter and quantizer
children are stood in for by a writer of a tiny GGUF."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from r1lib.errors import ExportCheckError
from r1lib.export.gguf import GGUFFile, verify_digests
from r1lib.io import sha256_file


def tiny_gguf(path: Path, value: float = 1.0) -> Path:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "qwen2")
    writer.add_tensor("a", np.full((8, 8), value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def fake_children(monkeypatch):
    """subprocess.run as tasks.export calls it: the converter (``--outfile``) or the quantizer (its JSON jobs) write a
    tiny GGUF to each output; anything else started is recorded."""
    started: list[list[str]] = []

    def run(cmd, *args, **kwargs):
        started.append(list(cmd))
        if "--outfile" in cmd:
            tiny_gguf(Path(cmd[cmd.index("--outfile") + 1]))
        elif "quantize" in cmd:
            for _, dest in json.loads(cmd[cmd.index("quantize") + 2]):
                tiny_gguf(Path(dest), 2.0)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", run)
    return started


def test_convert_and_quantize_record_the_digest_of_the_file_they_wrote(fake_children, tmp_path):
    from tasks.export import convert, quantize_all

    f16 = convert(str(tmp_path), "f16", tmp_path / "m-F16.gguf")
    assert f16.sha256 == sha256_file(Path(f16.path))
    (q8,) = quantize_all(Path(f16.path), ["Q8_0"], [tmp_path / "m-Q8_0.gguf"])
    assert q8.sha256 == sha256_file(Path(q8.path)) != f16.sha256
    verify_digests([f16, q8])  # untouched: passes


def _swapped(tmp_path: Path) -> GGUFFile:
    path = tiny_gguf(tmp_path / "run-Q8_0.gguf")
    written = GGUFFile(path=str(path), type="Q8_0", bytes=path.stat().st_size, sha256=sha256_file(path))
    tiny_gguf(path, 3.0)  # another model's file of the same size, put in its place after the run
    return written


def test_a_gguf_swapped_after_the_run_fails_the_smoke_test_naming_it(fake_children, tmp_path):
    from r1lib.config import SmokeConfig
    from tasks.smoke import smoke_all

    swapped = _swapped(tmp_path)
    with pytest.raises(ExportCheckError, match=r"run-Q8_0\.gguf: sha256 .* recorded when the export wrote it"):
        smoke_all([swapped], ["Hi"], SmokeConfig())
    assert fake_children == [], "the smoke child started on a file that is not the one the export wrote"


def test_a_gguf_swapped_or_gone_fails_the_model_card_naming_it(tmp_path):
    from tasks.card import write_card

    swapped = _swapped(tmp_path)
    with pytest.raises(ExportCheckError, match=r"run-Q8_0\.gguf: sha256 .* replaced or changed after the run"):
        write_card(None, [swapped], None, None, [], None, tmp_path / "card")
    assert not (tmp_path / "card").exists(), "the card was written before the check"
    Path(swapped.path).unlink()
    with pytest.raises(ExportCheckError, match=r"run-Q8_0\.gguf: the GGUF the export wrote is gone"):
        verify_digests([swapped])


def _stamped(tmp_path: Path, monkeypatch) -> GGUFFile:
    """A GGUF hashed as the export hashes it, its last change long enough ago for its stamp to count."""
    import r1lib.io
    from r1lib.io import sha256_stamped

    monkeypatch.setattr(r1lib.io, "STAMP_SETTLED_NS", 0)
    path = tiny_gguf(tmp_path / "run-Q8_0.gguf")
    digest, stamp = sha256_stamped(path)
    assert stamp is not None
    return GGUFFile(path=str(path), type="Q8_0", bytes=path.stat().st_size, sha256=digest, stamp=stamp)


def test_an_unchanged_stamped_gguf_is_not_hashed_again(tmp_path, monkeypatch):
    import r1lib.io

    written = _stamped(tmp_path, monkeypatch)
    read: list[Path] = []
    monkeypatch.setattr(r1lib.io, "sha256_file", lambda path: read.append(path) or "")
    verify_digests([GGUFFile.model_validate_json(written.model_dump_json())])  # as a cached result comes back
    assert read == []


def test_a_gguf_changed_in_place_with_its_mtime_put_back_is_hashed_again_and_named(tmp_path, monkeypatch):
    import os

    written = _stamped(tmp_path, monkeypatch)
    path = Path(written.path)
    before = path.stat()
    with open(path, "r+b") as handle:  # same inode, same size
        handle.seek(before.st_size - 4)
        handle.write(b"\x00\x01\x02\x03")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # a user can set the mtime back, not the ctime
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    with pytest.raises(ExportCheckError, match=r"run-Q8_0\.gguf: sha256 .* replaced or changed after the run"):
        verify_digests([written])


def test_a_gguf_replaced_by_a_rename_is_hashed_again_and_named(tmp_path, monkeypatch):
    written = _stamped(tmp_path, monkeypatch)
    other = tiny_gguf(tmp_path / "other.gguf", 3.0)
    other.replace(written.path)  # a new inode in its place
    with pytest.raises(ExportCheckError, match=r"run-Q8_0\.gguf: sha256 .* replaced or changed after the run"):
        verify_digests([written])


def test_a_file_changed_too_recently_for_its_ctime_to_tell_gets_no_stamp(tmp_path):
    from r1lib.io import sha256_file, sha256_stamped

    path = tiny_gguf(tmp_path / "fresh.gguf")
    assert sha256_stamped(path) == (sha256_file(path), None)  # just written: hashed again by every check


def test_a_temporary_full_precision_gguf_is_not_hashed(fake_children, tmp_path):
    from tasks.export import convert

    f16 = convert(str(tmp_path), "f16", tmp_path / "m-F16.gguf", digest=False)
    assert (f16.sha256, f16.stamp) == (None, None) and Path(f16.path).is_file()
