"""attack5: a process that is PID 1 (a container's entry point: docker run ... python -m flows...) spawns a child
with multiprocessing's spawn method, as a local Dask cluster does. The child imports r1lib first
(die_with_spawning_parent) and reads os.getppid() == 1: it takes its live parent for a dead one and exits.
Run: unshare --pid --fork --mount-proc python bench/attack5/pid1_spawn.py"""

import multiprocessing as mp
import os

import r1lib  # noqa: F401 - what a flow process has imported; the spawned child imports it again as __mp_main__


def child(q):
    q.put(f"child {os.getpid()} ran (parent {os.getppid()})")


if __name__ == "__main__":
    print("this process is pid", os.getpid())
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    p.join(120)
    print("child exit code:", p.exitcode, "| message:", q.get(timeout=1) if not q.empty() else "none")
