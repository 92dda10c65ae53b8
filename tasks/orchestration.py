"""Prefect policy shared by every stage's @task: retries with backoff and jitter, except for permanent errors."""

from __future__ import annotations

from typing import Any

from prefect.tasks import exponential_backoff

from tasks.errors import PermanentError


def retry_unless_permanent(task: Any, task_run: Any, state: Any) -> bool:
    """Retry transient failures (I/O, network, a killed process); fail bad data or config at once."""
    try:
        state.result()
    except PermanentError:
        return False
    except Exception:
        return True
    return True


def stage_options(retries: int = 2, timeout_seconds: float | None = None) -> dict[str, Any]:
    """Keyword arguments for ``@task`` that every stage uses."""
    return {
        "retries": retries,
        "retry_delay_seconds": exponential_backoff(backoff_factor=2),
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_unless_permanent,
        "timeout_seconds": timeout_seconds,
        "log_prints": True,
    }
