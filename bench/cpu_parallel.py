"""How many cores the machine really gives: the wall time of the same CPU-bound work in 1, 2, 4, ... processes at
once, and the effective parallelism (processes x single time / wall). A CPU quota (cgroup ``cpu.max``) or shared
hyperthreads show as a parallelism below the process count, whatever ``nproc`` says.

    python3 bench/cpu_parallel.py   # prints one line per process count (the machine-probe part of gpu_rehearse_all.sh)
"""

from __future__ import annotations

import os
import time
from multiprocessing import Pool


def burn(_: int) -> float:
    started = time.monotonic()
    total = 0
    for i in range(20_000_000):
        total += i * i % 7
    return time.monotonic() - started


def main() -> None:
    cores = len(os.sched_getaffinity(0))
    print(f"cpu_parallel: {cores} cores in the affinity mask", flush=True)
    single, count = None, 1
    while count <= cores:
        with Pool(count) as pool:
            started = time.monotonic()
            pool.map(burn, range(count))
            wall = time.monotonic() - started
        single = single or wall
        print(f"cpu_parallel: {count:3d} processes {wall:6.2f} s wall, parallelism {count * single / wall:5.1f}")
        count *= 2


if __name__ == "__main__":
    main()
