"""The temporary full-precision GGUF goes to RAM only where it fits beside the run (r1lib/export/scratch.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from r1lib.export import scratch


def safetensors_header_only(path: Path, shapes: dict[str, list[int]], dtype: str = "BF16") -> None:
    """A safetensors file's header (its data bytes are not read by ``full_precision_size``)."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2
        for n in shape:
            size *= n
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text)


def test_the_size_counts_every_tensor_of_every_shard_at_the_outtype_width(tmp_path):
    safetensors_header_only(tmp_path / "model-00001-of-00002.safetensors", {"a": [1024, 512], "b": [7]})
    safetensors_header_only(tmp_path / "model-00002-of-00002.safetensors", {"c": [3, 5, 2]})
    elements = 1024 * 512 + 7 + 30
    assert scratch.full_precision_size(tmp_path, "f16") == int(elements * 2 * scratch.HEADROOM)
    assert scratch.full_precision_size(tmp_path, "F32") == int(elements * 4 * scratch.HEADROOM)


@pytest.mark.parametrize(
    "content",
    [b"", b'\x10\x00\x00\x00\x00\x00\x00\x00{"a": {"sh', bytes(range(200, 256)), b"\x02\0\0\0\0\0\0\0[]"],
    ids=["empty", "truncated", "garbage", "no-object"],
)
def test_a_shard_that_is_no_safetensors_fails_naming_the_file(tmp_path, content):
    from r1lib.errors import ExportCheckError

    safetensors_header_only(tmp_path / "model-00001-of-00002.safetensors", {"a": [4, 4]})
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(content)
    with pytest.raises(ExportCheckError, match="model-00002-of-00002.safetensors: no readable safetensors header"):
        scratch.full_precision_size(tmp_path, "f16")


@pytest.fixture
def ram(tmp_path, monkeypatch):
    folder = tmp_path / "shm"
    folder.mkdir()
    monkeypatch.setattr(scratch, "RAM_DIR", folder)
    return folder


def fake_memory(monkeypatch, free: int, available: int | None) -> None:
    monkeypatch.setattr(scratch.shutil, "disk_usage", lambda _: type("U", (), {"free": free})())
    monkeypatch.setattr(scratch, "available_memory", lambda: available)


def test_auto_takes_ram_only_with_room_for_the_file_and_the_reserve(ram, tmp_path, monkeypatch):
    export = tmp_path / "export"
    need = 10 * 2**30
    fake_memory(monkeypatch, free=need + 1, available=need + scratch.MEMORY_RESERVE + 1)
    assert scratch.scratch_folder("auto", export, need, "run-1") == scratch.run_folder(ram, "run-1", export)
    assert scratch.run_folder(ram, "run-1", export).is_dir()

    fake_memory(monkeypatch, free=need - 1, available=10 * need)  # a small /dev/shm (Docker's default is 64 MB)
    root, why = scratch.scratch_root("auto", need)
    assert root is None and "free" in why
    fake_memory(monkeypatch, free=10 * need, available=need + scratch.MEMORY_RESERVE - 1)  # memory for the others
    root, why = scratch.scratch_root("auto", need)
    assert root is None and "available memory" in why
    fake_memory(monkeypatch, free=10 * need, available=None)  # a kernel that does not say: the disk, not a guess
    assert scratch.scratch_root("auto", need)[0] is None
    assert scratch.scratch_folder("auto", export, need, "run-1") == export and export.is_dir()


def test_auto_without_a_writable_ram_folder_uses_the_export_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(scratch, "RAM_DIR", tmp_path / "no-such-folder")
    root, why = scratch.scratch_root("auto", 1)
    assert root is None and "not a writable folder" in why


def test_export_and_an_explicit_folder_are_taken_as_set(ram, tmp_path, monkeypatch):
    fake_memory(monkeypatch, free=0, available=0)  # no check for what the user named
    assert scratch.scratch_folder("export", tmp_path / "export", 10**12, "r") == tmp_path / "export"
    assert scratch.scratch_folder(str(tmp_path / "fast"), tmp_path / "export", 10**12, "r") == (
        scratch.run_folder(tmp_path / "fast", "r", tmp_path / "export")
    )


def test_the_run_removes_only_its_own_scratch_folder(ram, tmp_path):
    export = tmp_path / "export"
    mine, other = scratch.run_folder(ram, "run-1", export), scratch.run_folder(ram, "run-2", export)
    for folder in (mine, other):
        folder.mkdir()
        (folder / "m-F16.gguf").write_bytes(b"GGUF")
    scratch.remove_scratch("auto", "run-1", export)
    assert not mine.exists() and (other / "m-F16.gguf").exists()
    export.mkdir()
    (export / "kept.gguf").write_bytes(b"GGUF")
    scratch.remove_scratch("export", "run-2", export)  # the export folder is never removed
    assert (export / "kept.gguf").exists() and other.exists()
    named = tmp_path / "fast"
    scratch.run_folder(named, "run-2", export).mkdir(parents=True)
    scratch.remove_scratch(str(named), "run-2", export)
    assert not scratch.run_folder(named, "run-2", export).exists() and named.is_dir()


def test_two_runs_of_one_run_name_in_two_runs_folders_keep_their_own_scratch(ram, tmp_path, monkeypatch):
    fake_memory(monkeypatch, free=2**40, available=2**40)
    first, second = tmp_path / "runs-a" / "exp" / "convert", tmp_path / "runs-b" / "exp" / "convert"
    folder_a = scratch.scratch_folder("auto", first, 10, "exp")
    folder_b = scratch.scratch_folder("auto", second, 10, "exp")
    assert folder_a != folder_b and folder_a.parent == folder_b.parent == ram
    (folder_b / "exp-F16.gguf").write_bytes(b"GGUF")  # the second run's quantizer input
    scratch.remove_scratch("auto", "exp", first)  # the first run ends
    assert not folder_a.exists() and (folder_b / "exp-F16.gguf").exists()


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24576000 kB\nMemAvailable:   1000 kB\n")
    assert scratch.available_memory(meminfo) == 1000 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")
    assert scratch.available_memory(meminfo) is None
    assert scratch.available_memory(tmp_path / "missing") is None


def test_a_killed_runs_scratch_folder_goes_at_the_next_export_and_nothing_else(ram, tmp_path, monkeypatch):
    """A run killed outright leaves its F16 in RAM: the next export into the root removes it (its run folder's lock
    is free), keeps a running run's folder (its lock is held), a folder whose owner has no lock file, and anything
    not made by this pipeline."""
    from r1lib.io import exclusive_dir

    fake_memory(monkeypatch, free=2**40, available=2**40)
    killed, running, lockless = (tmp_path / name / "convert" for name in ("killed", "running", "lockless"))
    with exclusive_dir(killed.parent):
        dead = scratch.scratch_folder("auto", killed, 10, "killed")
    (dead / "killed-F16.gguf").write_bytes(b"GGUF" * 1000)  # what the SIGKILLed converter had written
    lockless.mkdir(parents=True)
    kept_lockless = scratch.scratch_folder("auto", lockless, 10, "lockless")
    foreign = ram / "r1-finetune-someone-elses"
    foreign.mkdir()
    (ram / "unrelated.bin").write_bytes(b"x")
    with exclusive_dir(running.parent):
        alive = scratch.scratch_folder("auto", running, 10, "running")
        (alive / "running-F16.gguf").write_bytes(b"GGUF")
        assert not dead.exists()  # removed when the running run asked for its folder
        assert (alive / "running-F16.gguf").exists() and kept_lockless.exists() and foreign.exists()
        scratch.scratch_folder("auto", tmp_path / "third" / "convert", 10, "third")
        assert (alive / "running-F16.gguf").exists()  # held lock: still running
    gone = tmp_path / "moved" / "convert"
    gone.mkdir(parents=True)
    orphan = scratch.scratch_folder("auto", gone, 10, "moved")
    shutil_rmtree(gone.parent)  # its run folder deleted (it had no lock file)
    scratch.scratch_folder("auto", tmp_path / "fourth" / "convert", 10, "fourth")
    assert not orphan.exists() and (ram / "unrelated.bin").exists() and foreign.exists()


def shutil_rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


def test_a_second_export_counts_what_the_first_has_yet_to_write(ram, tmp_path, monkeypatch):
    """Two runs whose exports start together: the first takes RAM for its 60-byte file; the second sees 100 bytes
    free but 60 promised, so its 60 bytes go to its export folder; once the first has written its file, the free
    space it used is no longer counted twice."""
    from r1lib.io import exclusive_dir

    fake_memory(monkeypatch, free=100, available=2**40)
    first, second = tmp_path / "one" / "convert", tmp_path / "two" / "convert"
    with exclusive_dir(first.parent), exclusive_dir(second.parent):
        assert scratch.scratch_folder("auto", first, 60, "one").parent == ram
        assert scratch.promised(ram) == 60
        assert scratch.scratch_folder("auto", second, 60, "two") == second  # 100 free - 60 promised < 60
        (scratch.run_folder(ram, "one", first) / "one-F16.gguf").write_bytes(b"x" * 60)
        assert scratch.promised(ram) == 0
