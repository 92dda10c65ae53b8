"""The export branch runs in the background of the finetune flow: what it must keep of the serial flow's guarantees.

The run folder's lock outlives a background stage even when a stage beside it fails, and a failed background stage
is retried on its own while the stages beside it go on (the whole flow's overlap: tests/flows/test_flow.py)."""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

from prefect import flow, task

from flows.export import quantize_threads, settled
from r1lib.io import exclusive_dir


def lock_is_held(folder: Path) -> bool:
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@task
def background_stage(folder: str, seconds: float) -> bool:
    time.sleep(seconds)
    return lock_is_held(Path(folder))


ATTEMPTS: list[float] = []


@task(retries=1, retry_delay_seconds=0)
def flaky_stage() -> int:
    ATTEMPTS.append(time.monotonic())
    if len(ATTEMPTS) == 1:
        raise OSError("a transient failure")
    return len(ATTEMPTS)


@task
def gpu_stage(seconds: float) -> float:
    time.sleep(seconds)
    return time.monotonic()


def test_the_run_folder_lock_outlives_a_background_stage_when_a_stage_beside_it_fails(prefect_harness, tmp_path):
    seen = {}

    @flow
    def failing_run():
        with exclusive_dir(tmp_path), settled() as background:
            seen["future"] = background_stage.submit(str(tmp_path), 1.5)
            background.append(seen["future"])
            raise RuntimeError("the evaluation failed")

    state = failing_run(return_state=True)
    assert state.is_failed()
    assert seen["future"].result() is True  # it still held the lock when it ended
    assert not lock_is_held(tmp_path)


def test_a_failed_background_stage_is_retried_while_the_stage_beside_it_goes_on(prefect_harness):
    ATTEMPTS.clear()

    @flow
    def overlapped():
        with settled() as background:
            retried = flaky_stage.submit()
            background.append(retried)
            beside = gpu_stage.submit(1.0)
            return retried.result(), beside.result()

    attempts, beside_done = overlapped()
    assert attempts == 2 and len(ATTEMPTS) == 2
    assert ATTEMPTS[1] < beside_done  # the retry ran while the other stage was still running


def test_each_quantize_child_gets_every_core():
    import os

    assert quantize_threads(cores=16) == 16 and quantize_threads(cores=2) == 2
    assert quantize_threads() == len(os.sched_getaffinity(0))


def test_stages_submitted_to_threads_carry_no_timeout():
    """Prefect logs a WARNING on every run of a task with a timeout in a worker thread (the fresh-clone demo showed six:
    ``with_options(timeout_seconds=None)`` had kept the stages' own timeouts)."""
    from flows.export import convert, merge, quantize
    from flows.finetune import evaluate, fairness_check

    assert [t.timeout_seconds for t in (evaluate, fairness_check, merge, convert, quantize)] == [None] * 5


def test_a_deleted_temporary_gguf_takes_its_ram_folder_with_it(tmp_path, monkeypatch):
    """Once the quantizers have read it, the temporary F16 goes and its scratch folder with it: an empty folder of a
    run still running (its smoke test, card) would count as RAM its export has yet to fill (scratch.promised)."""
    from types import SimpleNamespace

    from flows.export import ExportBranch
    from r1lib.export import scratch

    ram = tmp_path / "shm"
    ram.mkdir()
    monkeypatch.setattr(scratch, "RAM_DIR", ram)
    monkeypatch.setattr(scratch.shutil, "disk_usage", lambda _: SimpleNamespace(free=2**40))
    monkeypatch.setattr(scratch, "available_memory", lambda: 2**40)
    export = tmp_path / "run" / "convert"
    with exclusive_dir(export.parent):
        folder = scratch.scratch_folder("auto", export, 60, "run")
        (folder / "run-F16.gguf").write_bytes(b"x" * 60)
        done = SimpleNamespace(result=lambda: SimpleNamespace(path=str(folder / "run-F16.gguf")))
        quantized = SimpleNamespace(result=lambda: ["q8"])
        assert ExportBranch(done, done, [quantized], keep_full=False).ggufs() == ["q8"]
        assert not folder.exists() and scratch.promised(ram) == 0
