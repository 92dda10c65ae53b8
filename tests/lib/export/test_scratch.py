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


def write_owner(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / scratch.OWNER).write_text(text)


@pytest.mark.parametrize("need", ['"abc"', "null", "1e400", "NaN", "[1]", "-5", "true", "1.5"])
def test_an_owner_record_whose_need_is_no_byte_count_promises_nothing(ram, tmp_path, monkeypatch, need):
    """A garbage ``need`` (hand-edited, another tool's, a hostile user's) neither fails the export nor holds RAM."""
    from r1lib.io import exclusive_dir

    fake_memory(monkeypatch, free=100, available=2**40)
    live = tmp_path / "live" / "convert"
    with exclusive_dir(live.parent):
        odd = scratch.run_folder(ram, "live", live)
        write_owner(odd, f'{{"export_dir": "{live}", "need": {need}}}')
        assert scratch.promised(ram) == 0
        assert scratch.scratch_folder("auto", tmp_path / "next" / "convert", 60, "next").parent == ram
        assert odd.is_dir()  # its run is running: kept


def test_a_run_lock_this_process_may_not_open_for_writing_is_still_probed(ram, tmp_path, monkeypatch):
    """Another user's run folder, or one on a read-only filesystem: its lock opens read-only; the export neither fails
    nor takes a live run's file (here every open for writing in the module is refused, as EACCES/EROFS would)."""
    import builtins

    from r1lib.io import exclusive_dir

    fake_memory(monkeypatch, free=2**40, available=2**40)
    killed, running = tmp_path / "killed" / "convert", tmp_path / "running" / "convert"
    with exclusive_dir(killed.parent):
        dead = scratch.scratch_folder("auto", killed, 10, "killed")

    def read_only(path, mode="r", *args, **kwargs):
        if set(mode) & set("wax+"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, mode, *args, **kwargs)

    with exclusive_dir(running.parent):
        alive = scratch.scratch_folder("auto", running, 10, "running")
        monkeypatch.setattr(scratch, "open", read_only, raising=False)
        scratch.remove_orphans(ram)
        assert alive.is_dir() and not dead.exists()


def test_a_symlink_or_a_file_in_place_of_the_runs_folder_is_never_written_through(ram, tmp_path, monkeypatch, caplog):
    """/dev/shm is everyone's: a link planted at the run's (predictable) folder name must not make the export write its
    record and its 14 GB file into the link's target, nor a file there fail it; a named folder fails naming the
    setting."""
    from r1lib.errors import ExportCheckError

    fake_memory(monkeypatch, free=2**40, available=2**40)
    important = tmp_path / "important"
    important.mkdir()
    (important / scratch.OWNER).write_text("precious")
    export = tmp_path / "run" / "convert"
    scratch.run_folder(ram, "run", export).symlink_to(important)
    with caplog.at_level("INFO", logger=scratch.log.name):
        assert scratch.scratch_folder("auto", export, 10, "run") == export
    assert "symlink" in caplog.text
    assert [p.name for p in important.iterdir()] == [scratch.OWNER] and (important / scratch.OWNER).read_text() == (
        "precious"
    )
    scratch.remove_scratch("auto", "run", export)  # the run's end leaves the link alone too
    assert scratch.run_folder(ram, "run", export).is_symlink()
    other = tmp_path / "other" / "convert"
    scratch.run_folder(ram, "other", other).write_text("not a folder")
    assert scratch.scratch_folder("auto", other, 10, "other") == other
    assert scratch.run_folder(ram, "other", other).read_text() == "not a folder"
    with pytest.raises(ExportCheckError, match="export.scratch_dir .*symlink"):
        scratch.scratch_folder(str(ram), export, 10, "run")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ExportCheckError, match="export.scratch_dir .*a-file.*cannot be made"):
        scratch.scratch_folder(str(tmp_path / "a-file"), export, 10, "run")


def test_a_symlinked_scratch_folder_is_neither_counted_nor_reported_removed(ram, tmp_path, caplog):
    """A ``r1-finetune-*`` link to a folder elsewhere (with an owner record there) is not ours: the removal that cannot
    happen is not logged as done at every export, and what lies behind it is not promised RAM."""
    victim = tmp_path / "victim"
    write_owner(victim, json.dumps({"export_dir": str(tmp_path / "gone" / "convert"), "need": 50}))
    (victim / "data").write_text("keep")
    (ram / "r1-finetune-evil-0123456789").symlink_to(victim)
    with caplog.at_level("INFO", logger=scratch.log.name):
        scratch.remove_orphans(ram)
    assert "removed" not in caplog.text and (victim / "data").read_text() == "keep"
    assert scratch.promised(ram) == 0


def test_a_symlink_inside_a_live_runs_folder_counts_as_nothing_written(ram, tmp_path, monkeypatch):
    """A link inside a scratch folder to a large file elsewhere does not make its run's promise look kept: the
    second export must still not count the same free RAM."""
    from r1lib.io import exclusive_dir

    fake_memory(monkeypatch, free=100, available=2**40)
    first, second = tmp_path / "one" / "convert", tmp_path / "two" / "convert"
    (tmp_path / "big").write_bytes(b"x" * 100)
    with exclusive_dir(first.parent), exclusive_dir(second.parent):
        folder = scratch.scratch_folder("auto", first, 60, "one")
        (folder / "link").symlink_to(tmp_path / "big")
        assert scratch.promised(ram) == 60
        assert scratch.scratch_folder("auto", second, 60, "two") == second


def test_a_restarted_runs_leftover_file_is_removed_before_the_room_is_measured(ram, tmp_path, monkeypatch):
    """A run killed by the out-of-memory killer and started again in its folder: its own earlier scratch folder (same
    name, now under its own held lock, so no orphan) holds the dead attempt's file; it goes before the room is
    measured, or the restart would find its own garbage filling RAM."""
    from r1lib.io import exclusive_dir

    def usage(_):
        return type("U", (), {"free": 100 - scratch.folder_bytes(ram)})()

    monkeypatch.setattr(scratch.shutil, "disk_usage", usage)
    monkeypatch.setattr(scratch, "available_memory", lambda: 2**40)
    export = tmp_path / "exp" / "convert"
    with exclusive_dir(export.parent):
        folder = scratch.scratch_folder("auto", export, 60, "exp")
        (folder / "exp-F16.gguf").write_bytes(b"x" * 60)  # then SIGKILL
    with exclusive_dir(export.parent):  # the restart
        assert scratch.scratch_folder("auto", export, 60, "exp") == folder
        assert not (folder / "exp-F16.gguf").exists()


def test_the_roots_lock_is_not_opened_through_a_symlink(ram, tmp_path, monkeypatch):
    fake_memory(monkeypatch, free=2**40, available=2**40)
    (tmp_path / "elsewhere").mkdir()
    (ram / ".r1-finetune.lock").symlink_to(tmp_path / "elsewhere" / "created")
    assert scratch.scratch_folder("auto", tmp_path / "r" / "convert", 10, "r").parent == ram
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_roots_lock_held_for_good_does_not_hang_the_export(ram, tmp_path, monkeypatch, caplog):
    """Another user's stuck process holding the root's lock: the export waits ``LOCK_WAIT``, says so and goes on."""
    import fcntl

    fake_memory(monkeypatch, free=2**40, available=2**40)
    monkeypatch.setattr(scratch, "LOCK_WAIT", 0.3)
    with open(ram / ".r1-finetune.lock", "a") as stuck:
        fcntl.flock(stuck, fcntl.LOCK_EX)
        with caplog.at_level("WARNING", logger=scratch.log.name):
            assert scratch.scratch_folder("auto", tmp_path / "r" / "convert", 10, "r").parent == ram
    assert "held for over" in caplog.text


def test_a_run_starting_while_an_export_probes_its_lock_is_not_refused(ram, tmp_path, monkeypatch):
    """``run_ended`` takes a run folder's lock for an instant; a run of that folder starting in that instant (a killed
    run started again) must wait it out, not fail as if a run held its folder."""
    import fcntl
    import threading
    import time

    from r1lib.io import exclusive_dir

    fake_memory(monkeypatch, free=2**40, available=2**40)
    killed = tmp_path / "killed" / "convert"
    with exclusive_dir(killed.parent):
        scratch.scratch_folder("auto", killed, 10, "killed")
    real_flock, outcome = fcntl.flock, []

    def restart():
        try:
            with exclusive_dir(killed.parent):
                outcome.append("started")
        except Exception as exc:  # noqa: BLE001 - the refusal is the outcome under test
            outcome.append(repr(exc))

    def probing(handle, operation):
        real_flock(handle, operation)
        if operation == fcntl.LOCK_EX | fcntl.LOCK_NB and threading.current_thread() is threading.main_thread():
            starter.start()
            time.sleep(0.3)  # the restart tries while the probe holds the lock

    starter = threading.Thread(target=restart)
    monkeypatch.setattr(fcntl, "flock", probing)
    scratch.remove_orphans(ram)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    starter.join(10)
    assert outcome == ["started"]
