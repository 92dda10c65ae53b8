import pytest

from r1lib.io import atomic_dir, atomic_path, write_jsonl


def test_a_crash_mid_write_leaves_neither_a_half_file_nor_a_temp(tmp_path):
    target = tmp_path / "out.gguf"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_old_file_survives_a_failed_rewrite(tmp_path):
    target = tmp_path / "rows.jsonl"
    write_jsonl(target, [{"a": 1}])
    with pytest.raises(ValueError):
        write_jsonl(target, ({"a": i} if i < 3 else (_ for _ in ()).throw(ValueError("boom")) for i in range(5)))
    assert target.read_text() == '{"a":1}\n'


def test_jsonl_keeps_unicode_and_big_integers(tmp_path):
    from r1lib.io import iter_jsonl, read_jsonl

    rows = [{"text": "法国 \u00e9", "n": 2**70}, {"x": None}]
    write_jsonl(tmp_path / "r.jsonl", rows)  # orjson, and json for what orjson refuses (integers past 64 bits)
    assert "法国" in (tmp_path / "r.jsonl").read_text(encoding="utf-8")
    assert read_jsonl(tmp_path / "r.jsonl") == rows and list(iter_jsonl(tmp_path / "r.jsonl"))[1:] == rows[1:]


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("v2-half")
            raise RuntimeError("killed")
    assert (target / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_a_second_holder_of_a_run_directory_fails_clearly(tmp_path):
    import subprocess
    import sys

    from r1lib.io import DirectoryBusy, exclusive_dir

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; sys.path.insert(0, '.'); from r1lib.io import exclusive_dir\n"
                f"with exclusive_dir({str(tmp_path)!r}):\n    print('locked', flush=True); time.sleep(30)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(DirectoryBusy, match=rf"{tmp_path} is in use by pid {holder.pid}"):
            with exclusive_dir(tmp_path, wait_seconds=1):
                pass
    finally:
        holder.kill()
        holder.wait()
    with exclusive_dir(tmp_path):  # a killed holder leaves no stale lock
        pass
