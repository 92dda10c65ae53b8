"""One local Prefect API server for a run that has none configured, tied to the process that started it.

With no ``PREFECT_API_URL``, Prefect starts a temporary server of its own: it waits 20 s for it (on a busy two-core
machine that start times out), and a parent killed with SIGKILL leaves it running, an orphan. The project's entry
points (``python -m flows.finetune``, ``python -m flows.nightly``) start this one instead:

- it is this package run as a child (``python -m r1lib.ops.local_server PORT PARENT_PID``): uvicorn serving Prefect's
  API app in that one process, on loopback, with the UI off and stdin closed;
- it dies with its parent: the kernel sends it SIGKILL when the parent dies (Linux ``PR_SET_PDEATHSIG``, when the
  parent's main thread started it), and a watchdog thread ends it within a second once its parent is gone (any
  platform), so kill -9 of the run leaves no server;
- the parent waits for it as long as ``R1_SERVER_START_TIMEOUT`` says (default 600 s), and stops it (SIGTERM, then
  SIGKILL after 10 s) when the run ends.

``PREFECT_API_URL`` is set in the parent's environment while it runs, so child processes (Dask or Ray workers,
torchrun ranks) report to the same server. A configured ``PREFECT_API_URL`` (a real server) is used as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from r1lib.compat import drain_prefect_workers
from r1lib.ops.api_watch import configured_api_url, exit_when_api_lost
from r1lib.process import restored_environ

log = logging.getLogger(__name__)
DEFAULT_START_TIMEOUT = 600.0
_STARTUP_FAILURE = 3  # uvicorn's exit status when it cannot start (the port was taken meanwhile)


def die_with_parent(parent: int, kernel: bool = True) -> None:
    """Make this process end when ``parent`` does: a watchdog thread that checks every second (it also covers a
    parent that died before the call), and with ``kernel`` on Linux SIGKILL from the kernel (PR_SET_PDEATHSIG,
    which fires when the parent's thread that started this process ends: only right for its main thread)."""
    if kernel and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(0)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def serve(port: int, parent: int, kernel: bool) -> None:
    """The child: Prefect's API app under uvicorn on 127.0.0.1:``port``, until the parent stops it or dies."""
    die_with_parent(parent, kernel)
    os.environ["PREFECT_UI_ENABLED"] = "false"
    import uvicorn
    from prefect.server.api.server import create_app

    uvicorn.run(create_app(ephemeral=True, final=True), host="127.0.0.1", port=port, log_level="error")


def _free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


def start_timeout() -> float:
    """How long to wait for the server: ``R1_SERVER_START_TIMEOUT`` seconds (default 600)."""
    raw = os.environ.get("R1_SERVER_START_TIMEOUT", "")
    try:
        value = float(raw) if raw else DEFAULT_START_TIMEOUT
    except ValueError:
        raise ValueError(f"R1_SERVER_START_TIMEOUT={raw!r} is not a number of seconds") from None
    if not 1 <= value <= 86400:
        raise ValueError(f"R1_SERVER_START_TIMEOUT={raw!r}: between 1 and 86400 seconds")
    return value


class LocalServer:
    """A started server child: its process, URL and log file."""

    def __init__(self, process: subprocess.Popen, url: str, log_path: Path):
        self.process, self.url, self.log_path = process, url, log_path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start(timeout: float | None = None) -> LocalServer:
    """Start the server child and wait until it answers (``timeout`` seconds; default start_timeout())."""
    timeout = start_timeout() if timeout is None else timeout
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "local-server.log"
    deadline = time.monotonic() + timeout
    for _ in range(5):  # another process may take the free port before the child binds it
        port = _free_port()
        url = f"http://127.0.0.1:{port}/api"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "r1lib.ops.local_server",
                    str(port),
                    str(os.getpid()),
                    str(int(threading.current_thread() is threading.main_thread())),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the run, which stops the server itself
                env={**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, "PREFECT_UI_ENABLED": "false"},
            )
        server = LocalServer(process, url, log_path)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            if _healthy(url):
                log.info("local Prefect server on %s (pid %d), stopped with this run", url, process.pid)
                return server
            time.sleep(0.25)
        else:
            server.stop()
            raise RuntimeError(
                f"the local Prefect server did not answer on {url} within {timeout:.0f} s "
                f"(R1_SERVER_START_TIMEOUT); its log: {log_path}"
            )
        if process.returncode != _STARTUP_FAILURE:
            raise RuntimeError(f"the local Prefect server exited with status {process.returncode}; its log: {log_path}")
    raise RuntimeError(f"the local Prefect server found no free port; its log: {log_path}")


_SHARED: LocalServer | None = None


def shared_server_url() -> str:
    """The configured API, else one local server for this process (started on first use, stopped at exit, dying
    with this process): for the workers of a local Dask or Ray cluster started outside prefect_api()."""
    global _SHARED
    if configured := configured_api_url():
        return configured
    if _SHARED is None or _SHARED.process.poll() is not None:
        import atexit

        _SHARED = start()
        atexit.register(_SHARED.stop)
    return _SHARED.url


@contextlib.contextmanager
def prefect_api(timeout: float | None = None) -> Iterator[str]:
    """The Prefect API for a run: the configured one, else a local server started here for the block (and for the
    child processes it starts) and stopped when the block ends; it dies with this process if this process is
    killed. A server that stops answering for a while ends the process with a message naming it
    (r1lib/ops/api_watch.py)."""
    configured = configured_api_url()
    if configured:
        with exit_when_api_lost(configured):
            yield configured
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = start(timeout)
    with restored_environ(["PREFECT_API_URL"]):
        os.environ["PREFECT_API_URL"] = server.url
        try:
            with temporary_settings({PREFECT_API_URL: server.url}), exit_when_api_lost(server.url):
                try:
                    yield server.url
                finally:
                    with contextlib.suppress(Exception):  # a run that failed still stops its server
                        drain_prefect_workers()
        finally:
            server.stop()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1")
