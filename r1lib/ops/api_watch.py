"""The command stops, with a message naming the server, when its Prefect API server stops answering.

Without a server nothing of a run can be recorded: Prefect's client retries each call for about a minute, a task
whose call failed is retried (each retry failing the same way), and at the end the flow engine cannot record the
final state either ("Finished in state Running()") while its background workers keep the process from exiting.
``exit_when_api_lost`` watches the API's ``/health`` from a thread for as long as the run lasts; once it has not
answered for ``OUTAGE_S`` seconds in a row, it prints one message and ends the process (exit status 3). The children
die with it (r1lib/process.py). The work done so far stays on disk: a rerun of the same command, once the server
answers, takes the finished stages from the cache and resumes training from its last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

# Longer than one call's own retries in Prefect's client (about 60 s measured here): a server that restarts within
# that is waited for, as the client itself would.
OUTAGE_S = 90.0
POLL_S = 5.0
EXIT_STATUS = 3


def api_error(url: str, timeout: float = 10.0) -> str | None:
    """None when ``<url>/health`` answers 200, else what went wrong, in words."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", None) or exc)


def configured_api_url() -> str | None:
    """The Prefect API this process is set to use, if any."""
    from prefect.settings import PREFECT_API_URL

    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


def lost_message(url: str, error: str, outage_s: float) -> str:
    return (
        f"the Prefect server at {url} has not answered for {outage_s:g} s ({error}): the run cannot record its "
        "state, so it stops here. The work done so far is kept: once the server answers, run the same command "
        "again; finished stages come from the cache and training resumes from its last complete checkpoint."
    )


def _exit(status: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)  # not sys.exit: Prefect's workers, still retrying the dead server, would keep the process alive


@contextlib.contextmanager
def exit_when_api_lost(
    url: str,
    outage_s: float | None = None,
    poll_s: float | None = None,
    exit: Callable[[int], None] = _exit,
) -> Iterator[None]:
    """Watch ``url`` (a Prefect API URL) while the block runs; after ``outage_s`` (default ``OUTAGE_S``) seconds
    without an answer, print ``lost_message`` to stderr and call ``exit(EXIT_STATUS)``."""
    outage_s = OUTAGE_S if outage_s is None else outage_s
    poll_s = POLL_S if poll_s is None else poll_s
    done = threading.Event()

    def watch() -> None:
        down_since = None
        while not done.wait(poll_s):
            error = api_error(url, timeout=min(10.0, max(poll_s, 1.0)))
            if error is None:
                down_since = None
                continue
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since >= outage_s and not done.is_set():
                print(f"\n{lost_message(url, error, outage_s)}", file=sys.stderr)
                exit(EXIT_STATUS)
                return

    watcher = threading.Thread(target=watch, name="prefect-api-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


REPORT_S = 10.0  # the longest a stage waits for one report: the server can die between /health and the call


def within(seconds: float, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)`` in a daemon thread (with this context: Prefect's run context is a context variable),
    raising TimeoutError when it has not returned in ``seconds`` (the Prefect client retries a refused connection for
    about a minute); the thread is left to end on its own."""
    import contextvars

    context, outcome = contextvars.copy_context(), {}

    def run() -> None:
        try:
            outcome["value"] = context.run(call, *args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="api-report", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError(f"no answer from the Prefect API in {seconds:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class ApiReports:
    """Reports to the Prefect API that a stage can do without (progress, artifacts): ``reports(call, *args)`` runs
    the call unless the API's ``/health`` does not answer at once, and after one failure (the server stopped
    answering) it logs it and skips every later call. A lost progress bar must not cost training its work: before
    this, a dead server failed the train stage on its next progress update (each retry failing the same way at its
    start), and every update would have waited out the client's own minute of retries."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.failed: str | None = None

    def __call__(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import httpx

        if self.failed is not None:
            return None
        url = self.url or configured_api_url()
        error = api_error(url, timeout=5.0) if url else None
        if error is None:
            try:
                return within(REPORT_S, call, *args, **kwargs)
            except (httpx.HTTPError, OSError) as exc:  # TimeoutError is an OSError
                error = str(exc) or type(exc).__name__
        from r1lib.policy import stage_logger

        self.failed = error
        stage_logger().warning("the Prefect API did not take a report (%s); the stage goes on without them", error)
        return None
