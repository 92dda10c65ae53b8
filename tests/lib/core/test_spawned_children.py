"""A child that multiprocessing spawns from a process of this project dies with that process, even before it has
finished importing (r1lib/process.py: die_with_spawning_parent, called by the r1lib and flows packages)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import psutil
import pytest

from tests.conftest import ROOT
from tests.lib.export.test_export_crash import _wait_for
from tests.lib.export.test_export_orphans import kill_and_count

# The parent imports r1lib and spawns a child that only sleeps: the child imports the parent's script (so r1lib)
# before it runs its target, as a Dask worker imports flows.finetune. Nothing else would end it within two minutes.
PARENT = textwrap.dedent("""
    import multiprocessing
    import time

    import r1lib  # noqa: F401 - what the spawned child imports first

    if __name__ == "__main__":
        multiprocessing.get_context("spawn").Process(target=time.sleep, args=(120,)).start()
        time.sleep(120)
""")


def spawned(pid: int) -> list[psutil.Process]:
    return [p for p in psutil.Process(pid).children() if "--multiprocessing-fork" in p.cmdline()]


def test_a_spawned_child_dies_with_its_killed_parent(tmp_path):
    (tmp_path / "parent.py").write_text(PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "parent.py")], cwd=tmp_path, env=env)
    try:
        # The child's watch is a second thread: it runs once the child has imported r1lib.
        child = _wait_for(
            lambda: next((c for c in spawned(proc.pid) if c.num_threads() > 1), None), timeout=60, what="the watch"
        )
        started, alive = kill_and_count(proc, grace_s=5)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert child.pid in [p.pid for p in started]  # beside multiprocessing's resource tracker
    assert alive == []  # without the watch the child would sleep on for two minutes, and the tracker with it


# The same parent as PID 1 (a container's entry point): its spawned child sees getppid() == 1 from the start and must
# run, not take its live parent for a dead one (bench/attack5/pid1_spawn.py).
PID1_PARENT = textwrap.dedent("""
    import multiprocessing
    import os

    import r1lib  # noqa: F401 - what the spawned child imports first

    def child(queue):
        queue.put(os.getppid())

    if __name__ == "__main__":
        assert os.getpid() == 1, os.getpid()
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        process = context.Process(target=child, args=(queue,))
        process.start()
        process.join(120)
        print("exit", process.exitcode, "parent", queue.get(timeout=5))
""")


def test_a_spawned_child_of_a_pid_1_parent_runs(tmp_path):
    unshare = shutil.which("unshare")
    probe = unshare and subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"], capture_output=True)
    if not probe or probe.returncode != 0:
        pytest.skip("no pid namespace here (unshare --pid needs privileges)")
    (tmp_path / "parent.py").write_text(PID1_PARENT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, str(tmp_path / "parent.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "exit 0 parent 1" in done.stdout


def test_restored_environ_takes_one_name_or_several(monkeypatch):
    from r1lib.process import restored_environ

    monkeypatch.setenv("R1_TEST_KEPT", "before")
    monkeypatch.delenv("R1_TEST_ADDED", raising=False)
    monkeypatch.delenv("R", raising=False)
    with restored_environ("R1_TEST_KEPT"):  # one name, not its characters
        os.environ["R1_TEST_KEPT"] = "changed"
        os.environ["R"] = "a stray one-letter name a character loop would have saved"
    assert os.environ["R1_TEST_KEPT"] == "before"
    assert os.environ.pop("R") == "a stray one-letter name a character loop would have saved"
    with restored_environ(["R1_TEST_KEPT", "R1_TEST_ADDED"]):
        os.environ["R1_TEST_ADDED"] = "new"
        del os.environ["R1_TEST_KEPT"]
    assert os.environ["R1_TEST_KEPT"] == "before" and "R1_TEST_ADDED" not in os.environ
