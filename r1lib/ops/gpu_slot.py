"""One GPU, one training: the slot of a Prefect global concurrency limit that the GPU stages hold.

Training, evaluation and the merge run inside ``gpu_slot()``: a second run waits for the slot instead of sharing the
GPU (and running out of memory). The slot is a Prefect lease, renewed while its holder lives. Its id is also written
on the flow run (label ``r1.gpu-lease``), so that a holder killed outright (SIGKILL, the OOM killer) does not keep
the GPU until the lease runs out: the retry of that flow run, or the next run, releases it at once
(r1lib/ops/recovery.py). Only the Prefect client's public methods are used.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from uuid import UUID

from r1lib.policy import stage_logger

# How long a GPU slot stays held without its holder renewing it (every quarter of it while the holder lives). A
# holder killed outright cannot release it; a retry or the next run does (r1lib/ops/recovery.py), and otherwise the
# server frees it when the lease runs out. The server accepts 60 s at the least; much shorter than this leaves
# little room to renew through an API hiccup (the slot would lapse while training goes on).
GPU_LEASE_SECONDS = 120
LEASE_LABEL = "r1.gpu-lease"  # flow-run label holding the id of the lease the run holds ("" when none)


def gpu_limit_name() -> str:
    """The global concurrency limit that GPU stages occupy: ``$R1_GPU_LIMIT`` (default ``gpu``; empty: none).

    ``python -m r1lib.ops.deploy`` creates it (or ``prefect gcl create gpu --limit 1``); on several GPU boxes give each
    worker its own, ``R1_GPU_LIMIT=gpu:<host>``. While the limit does not exist the slot is a no-op, said in the log.
    """
    return os.environ.get("R1_GPU_LIMIT", "gpu")


def _current_flow_run_id() -> UUID | None:
    from prefect.runtime import flow_run

    return UUID(str(flow_run.id)) if flow_run.id else None


def record_lease(client, flow_run_id: UUID | None, lease_id: str) -> None:
    """Write (or, with ``""``, clear) the lease id on the flow run; best effort: the lease works without it."""
    if flow_run_id is None:
        return
    try:
        client.update_flow_run_labels(flow_run_id, {LEASE_LABEL: lease_id})
    except Exception as exc:  # noqa: BLE001 (a lost label costs a wait for the lease, never the run)
        stage_logger().warning("could not record GPU lease %s on flow run %s: %s", lease_id, flow_run_id, exc)


def release_lease(client, lease_id: str) -> None:
    """Give a lease's slots back (a lease already gone is no error)."""
    client.release_concurrency_slots_with_lease(UUID(lease_id))


def _acquire(client, name: str, holder) -> str:
    """Take one slot of ``name`` with a lease, waiting while the limit is full; the lease id."""
    import httpx

    waited = None
    while True:
        try:
            response = client.increment_concurrency_slots_with_lease(
                names=[name], slots=1, mode="concurrency", lease_duration=GPU_LEASE_SECONDS, holder=holder
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 423:  # 423 Locked: every slot is taken
                raise
            if waited is None:
                waited = time.monotonic()
                stage_logger().info("waiting for a slot of the %r concurrency limit (another run holds it)", name)
            time.sleep(float(exc.response.headers.get("Retry-After", 5)))
            continue
        if waited is not None:
            stage_logger().info("got a %r slot after %.0f s", name, time.monotonic() - waited)
        return response.json()["lease_id"]


def _renew(lease_id: str, stop: threading.Event) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while not stop.wait(GPU_LEASE_SECONDS / 4):
            try:
                client.renew_concurrency_lease(UUID(lease_id), lease_duration=GPU_LEASE_SECONDS)
            except Exception as exc:  # noqa: BLE001 (the next renewal may get through; training goes on)
                stage_logger().warning("could not renew GPU lease %s: %s", lease_id, exc)


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold one slot of the GPU limit (``gpu_limit_name()``) for the block, so two trainings never share a GPU."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.exceptions import ObjectNotFound

    name = gpu_limit_name()
    if not name:
        yield
        return
    run_id = _current_flow_run_id()
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            stage_logger().info(
                "no concurrency limit %r: GPU stages are not limited (python -m r1lib.ops.deploy creates it)", name
            )
            yield
            return
        holder = ConcurrencyLeaseHolder(type="flow_run", id=run_id) if run_id else None
        lease_id = _acquire(client, name, holder)
        record_lease(client, run_id, lease_id)
        stop = threading.Event()
        renewer = threading.Thread(target=_renew, args=(lease_id, stop), name="gpu-lease", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join(timeout=30)
            try:
                release_lease(client, lease_id)
                record_lease(client, run_id, "")
            except Exception as exc:  # noqa: BLE001 (the block's own error matters more; the lease runs out)
                stage_logger().warning("could not release GPU lease %s: %s", lease_id, exc)
