"""A shard writer that runs out of disk fails once, with a message naming the file and the free space, and leaves
no partial file: the cleanup's own "No space left" (flushing the buffer it is discarding) never replaces it."""

from __future__ import annotations

import errno

import pytest

from r1lib.data import shards
from r1lib.errors import DiskFull


class FillingHandle:
    """A file handle on a disk with ``room`` bytes left: writes buffer, and the flush past the room fails."""

    def __init__(self, real, room: int):
        self.real, self.room, self.buffered = real, room, 0

    def write(self, data: bytes) -> int:
        self.buffered += len(data)
        if self.buffered > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real.write(data)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if self.buffered > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self) -> int:
        return self.real.fileno()

    def close(self) -> None:
        self.real.close()
        if self.buffered > self.room:  # close() flushes the rest: the second "No space left"
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture
def full_disk(monkeypatch):
    real_open = open

    def filling_open(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        return FillingHandle(handle, room=200) if "w" in mode else handle

    monkeypatch.setattr(shards, "open", filling_open, raising=False)


def test_a_full_disk_while_writing_shards_names_the_shard_and_leaves_nothing(tmp_path, full_disk):
    with pytest.raises(DiskFull) as raised:
        with shards.ShardWriter(tmp_path / "train", shard_rows=1000) as writer:
            for i in range(100):
                writer.write({"prompt": f"question {i}", "answer": "x" * 20})
    message = str(raised.value)
    assert "No space left on device writing" in message and str(tmp_path / "train-0000.jsonl") in message
    assert "free" in message and "runs_dir" in message
    assert list(tmp_path.iterdir()) == []  # no partial shard, no temporary file


def test_a_full_disk_in_one_jsonl_file_names_it(tmp_path, full_disk):
    with pytest.raises(DiskFull, match="quarantine.jsonl"):
        with shards.JsonlWriter(tmp_path / "quarantine.jsonl") as writer:
            writer.write_many([{"row": "y" * 50}] * 10)
    assert list(tmp_path.iterdir()) == []
