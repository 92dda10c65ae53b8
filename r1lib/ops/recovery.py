"""Close out what a killed flow-run process left behind: task runs stuck in Running, and the GPU slot it held.

A flow-run process killed outright (SIGKILL, the OOM killer) cannot report its task runs: the worker marks the flow
run Crashed, but the task runs it was running stay Running for ever, any sub-flow run it had started stays Running,
and its GPU slot stays held until the lease runs out. ``close_out_orphans`` is the first thing the flows do:

- in a retry of such a run (``prefect flow-run retry``, the UI's Retry), every task run and sub-flow run of the same
  flow run that is not final belongs to the dead attempt (this attempt has started none yet);
- in any run, task runs that are not final under a flow run of these flows that has ended are orphans too.

Each is set Crashed with a message that says so, and a GPU lease recorded on its flow run (r1lib/ops/gpu_slot.py) is
released. Best effort: a failure here is logged and never fails the run.
"""

from __future__ import annotations

from uuid import UUID

from r1lib.ops.gpu_slot import LEASE_LABEL, record_lease, release_lease
from r1lib.policy import stage_logger

FLOWS = ("r1-finetune", "r1-nightly-retrain", "r1-data")  # whose ended runs' orphans any run closes out
_SEARCH_LIMIT = 200


def _crashed(message: str):
    from prefect.states import Crashed

    return Crashed(message=message)


def _family(client, flow_run_id: UUID) -> list:
    """The flow run's sub-flow runs, at any depth."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    found, parents = [], [flow_run_id]
    while parents:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=parents))
        )
        found += children
        parents = [run.id for run in children]
    return found


def _unfinished_tasks(client, flow_run_ids: list[UUID] | None = None) -> list:
    """Task runs not final: of the given flow runs, or else of any ended run of FLOWS."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    unfinished = TaskRunFilter(
        state=TaskRunFilterState(
            type=TaskRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED])
        )
    )
    if flow_run_ids is not None:
        runs = FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        return client.read_task_runs(flow_run_filter=runs, task_run_filter=unfinished, limit=_SEARCH_LIMIT)
    ended = [StateType.CRASHED, StateType.FAILED, StateType.CANCELLED, StateType.COMPLETED]
    return client.read_task_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=list(FLOWS))),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ended))),
        task_run_filter=unfinished,
        limit=_SEARCH_LIMIT,
    )


def _release_recorded_lease(client, run) -> str | None:
    lease = (run.labels or {}).get(LEASE_LABEL)
    if not lease:
        return None
    release_lease(client, str(lease))
    record_lease(client, run.id, "")
    return f"released the GPU slot (lease {lease}) that flow run {run.name!r} held when it died"


def close_out_orphans() -> list[str]:
    """Set Crashed every task run and sub-flow run a dead attempt left unfinished, release its GPU slot; one line
    per thing done (also logged). Call it first in a flow, before this attempt starts any task."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    log, done = stage_logger(), []
    me = UUID(str(flow_run.id)) if flow_run.id else None
    try:
        with get_client(sync_client=True) as client:
            stale_runs = []
            if me is not None and (flow_run.run_count or 1) > 1:
                own = client.read_flow_run(me)
                family = _family(client, me)
                attempt = (flow_run.run_count or 2) - 1
                message = f"left unfinished when attempt {attempt} of flow run {own.name!r} died; closed by its retry"
                for child in family:
                    if not (child.state and child.state.is_final()):
                        client.set_flow_run_state(child.id, _crashed(message), force=True)
                        done.append(f"sub-flow run {child.name!r} set Crashed ({message})")
                for task in _unfinished_tasks(client, [me, *(c.id for c in family)]):
                    client.set_task_run_state(task.id, _crashed(message), force=True)
                    done.append(f"task run {task.name!r} set Crashed ({message})")
                stale_runs += [own, *family]
            others: dict[UUID, list] = {}
            for task in _unfinished_tasks(client):
                others.setdefault(task.flow_run_id, []).append(task)
            for run_id, tasks in others.items():
                if run_id == me:
                    continue
                run = client.read_flow_run(run_id)
                message = f"its flow run {run.name!r} ended {run.state.name} while it ran; closed by a later run"
                for task in tasks:
                    client.set_task_run_state(task.id, _crashed(message), force=True)
                    done.append(f"task run {task.name!r} set Crashed ({message})")
                stale_runs.append(run)
            for run in stale_runs:
                if said := _release_recorded_lease(client, run):
                    done.append(said)
    except Exception as exc:  # noqa: BLE001 (cleaning up after a dead attempt must never fail this one)
        log.warning("could not close out what an earlier run left behind: %s", exc)
    for line in done:
        log.info(line)
    return done
