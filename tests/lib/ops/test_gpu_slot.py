"""The GPU slot: held when the API has the limit, skipped (at info level, no warning) when it does not."""

from __future__ import annotations

import logging
import uuid

import pytest


@pytest.fixture
def limit_name(monkeypatch):
    name = f"gpu-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("R1_GPU_LIMIT", name)
    return name


def test_missing_limit_is_skipped_with_one_info_line_and_no_warning(prefect_harness, limit_name, caplog):
    from r1lib.ops.gpu_slot import gpu_slot

    with caplog.at_level(logging.DEBUG):
        with gpu_slot():
            pass
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [], [r.getMessage() for r in warnings]
    infos = [r.getMessage() for r in caplog.records if r.name == "r1-finetune" and limit_name in r.getMessage()]
    assert len(infos) == 1 and "not limited" in infos[0]


def test_existing_limit_is_held_while_inside(prefect_harness, limit_name):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from r1lib.ops.gpu_slot import gpu_slot

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit_name, limit=1))
        try:
            with gpu_slot():
                assert client.read_global_concurrency_limit_by_name(limit_name).active_slots == 1
            assert client.read_global_concurrency_limit_by_name(limit_name).active_slots == 0
        finally:
            client.delete_global_concurrency_limit_by_name(limit_name)
