"""attack5: finding 1 with a real local Dask cluster (as runner.kind dask starts): run as PID 1, the worker dies as
soon as a task makes it import r1lib. Run: unshare --pid --fork --mount-proc python bench/attack5/pid1_dask.py
(and without unshare for the control)."""

import os

if __name__ == "__main__":
    from distributed import Client, LocalCluster

    import r1lib.process

    print("this process is pid", os.getpid())
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        future = client.submit(r1lib.process.apply_defaults, pure=False)  # the worker imports r1lib to unpickle it
        try:
            print("task result:", future.result(timeout=90), "(ran)")
        except Exception as exc:  # noqa: BLE001
            print("task failed:", type(exc).__name__, str(exc)[:200])
