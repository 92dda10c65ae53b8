"""The roots check holds for the file that is actually read, not for the name checked before.

A data file inside ``data.allowed_roots`` passes the check before any stage runs; then it (or a folder on its path)
is swapped for a symlink to a file outside. The validate stage opens the file and checks the descriptor's own real
path, so the swapped file is refused and not one of its rows is read; a swap racing the reads never lets a row
through either.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from r1lib.errors import DataValidationError, PathNotAllowed
from tasks.validate import validate_file, validate_input

SECRET = "OUTSIDE-THE-ROOTS"


def rows(tag: str, n: int) -> str:
    return "".join(
        json.dumps({"instruction": f"{tag} question {k}", "output": f"{tag} answer {k}"}) + "\n" for k in range(n)
    )


@pytest.fixture
def tree(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "train.jsonl").write_text(rows("inside", 5))
    (outside / "train.jsonl").write_text(rows(SECRET, 50))
    return root, outside


def swap_for_link(path: Path, target: Path) -> None:
    link = path.with_name(path.name + ".link")
    link.symlink_to(target)
    os.replace(link, path)  # atomic: the name now points outside


def read_everything(out_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in out_dir.rglob("*") if p.is_file())


def test_a_file_swapped_for_a_symlink_after_the_check_is_refused(tree, tmp_path):
    from r1lib.data.inputs import expand_inputs

    root, outside = tree
    path = root / "sub" / "train.jsonl"
    assert expand_inputs(str(path), [str(root)]) == [str(path)]  # the check before the stages: it passes
    swap_for_link(path, outside / "train.jsonl")
    out = tmp_path / "out"
    with pytest.raises(PathNotAllowed, match=r"opened as .*outside/train\.jsonl.*outside data\.allowed_roots"):
        validate_input(0, "train", str(path), 10_000, 2**20, 100, out, [str(root)])
    assert SECRET not in read_everything(out)


def test_a_folder_on_the_path_swapped_for_a_symlink_is_refused(tree, tmp_path):
    root, outside = tree
    path = root / "sub" / "train.jsonl"
    (root / "sub").rename(root / "sub.real")
    (root / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathNotAllowed, match="outside data.allowed_roots"):
        validate_input(0, "train", str(path), 10_000, 2**20, 100, tmp_path / "out", [str(root)])


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_format_is_opened_through_the_check(tree, tmp_path, suffix):
    root, outside = tree
    import pandas as pd

    frame = pd.DataFrame([{"instruction": f"{SECRET} q", "output": "a"}])
    target = outside / f"data{suffix}"
    {
        ".jsonl": lambda: target.write_text(frame.to_json(orient="records", lines=True)),
        ".json": lambda: target.write_text(frame.to_json(orient="records")),
        ".csv": lambda: frame.to_csv(target, index=False),
        ".parquet": lambda: frame.to_parquet(target),
    }[suffix]()
    (root / f"data{suffix}").symlink_to(target)
    with pytest.raises(PathNotAllowed):
        validate_file(root / f"data{suffix}", 10_000, allowed_roots=[str(root)])


def test_a_symlink_that_stays_inside_the_roots_is_read(tree):
    root, _ = tree
    (root / "alias.jsonl").symlink_to(root / "sub" / "train.jsonl")
    accepted, _, _ = validate_file(root / "alias.jsonl", 10_000, allowed_roots=[str(root)])
    assert len(accepted) == 5


def test_a_fifo_is_not_read_and_does_not_block(tree):
    root, _ = tree
    fifo = root / "pipe.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(PathNotAllowed, match="not a regular file"):
        validate_file(fifo, 10_000, allowed_roots=[str(root)])


def test_a_swap_racing_the_reads_never_lets_an_outside_row_through(tree):
    """A thread flips the name between the real file and a symlink to the outside file while the file is read
    again and again: every read either gets the inside rows or is refused."""
    root, outside = tree
    path = root / "sub" / "train.jsonl"
    real = root / "sub" / "real.jsonl"
    os.link(path, real)
    stop = threading.Event()

    def flip():
        while not stop.is_set():
            swap_for_link(path, outside / "train.jsonl")
            tmp = path.with_name("back.tmp")
            os.link(real, tmp)
            os.replace(tmp, path)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    outcomes = {"read": 0, "refused": 0}
    leaked = 0
    try:
        for _ in range(5000):
            if min(outcomes.values()) >= 20:
                break
            time.sleep(0.001)  # lets the flipping thread run between reads
            try:
                accepted, quarantined, _ = validate_file(path, 10_000, allowed_roots=[str(root)])
            except PathNotAllowed:
                outcomes["refused"] += 1
            except (FileNotFoundError, DataValidationError):  # the name between two renames: nothing was read
                continue
            else:
                outcomes["read"] += 1
                leaked += sum(SECRET in json.dumps(r) for r in accepted + quarantined)
    finally:
        stop.set()
        flipper.join()
    assert leaked == 0
    assert outcomes["read"] and outcomes["refused"], outcomes  # the race really happened, both ways


def test_the_flow_hands_the_roots_to_the_validate_task():
    """The map unit that opens the files cannot be called without data.allowed_roots."""
    import inspect

    from tasks.validate import validate_input_task

    assert inspect.signature(validate_input_task.fn).parameters["allowed_roots"].default is inspect.Parameter.empty
