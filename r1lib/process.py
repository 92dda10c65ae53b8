"""Process-wide settings of a run, applied by the command line before torch or Prefect load: an environment variable
the user set wins. The bench and the tests set them through scripts/env.sh."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

DEFAULTS = {
    # Waiting OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads made a
    # pre-training step 10x slower (4.3 s against 0.45 s at load 11).
    "OMP_WAIT_POLICY": "PASSIVE",
    # Prefect's 20 s default for the temporary API to come up times out on a busy machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "600",
    # A progress bar appears only for a loop that runs longer than this many seconds (tqdm reads TQDM_* defaults).
    "TQDM_DELAY": "5",
}

# bitsandbytes 0.50.2, on a CPU with AVX512-BF16, tries to fetch an optional 4-bit kernel from the Hugging Face hub
# (the `kernels` package) and warns when it cannot; it then uses its built-in CPU kernel, as every offline run does.
OPTIONAL_KERNEL_NOTICE = (
    "bitsandbytes.backends.cpu.ops",
    "Failed to load CPU gemm_4bit_forward from kernels-community",
)


class DropNotice(logging.Filter):
    """Drop one known, harmless warning of a library logger; every other record passes."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and str(record.msg).startswith(self.prefix))


def apply_defaults() -> None:
    """Set ``DEFAULTS`` where unset and drop the known harmless library warning."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    logger_name, prefix = OPTIONAL_KERNEL_NOTICE
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropNotice) for f in logger.filters):
        logger.addFilter(DropNotice(prefix))


def die_with_parent(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` for a child process that must not outlive the process starting it (a GGUF converter, a
    quantizer, a smoke-test interpreter): on Linux the kernel sends the child ``sig`` when its parent dies, so a
    ``kill -9`` of the flow-run process leaves no 15 GB converter running beside the retry's. The parent's pid is
    taken before the fork: a parent that died before the child armed the signal is caught by comparing it after.
    None elsewhere (no such kernel feature)."""
    if not sys.platform.startswith("linux"):
        return None
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before the fork: the child only calls it

    def arm() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return arm


@functools.cache
def die_with_spawning_parent(poll_s: float = 0.25) -> None:
    """In a child of multiprocessing's spawn start method (a worker of a local Dask cluster), exit as soon as the
    process that spawned it dies; a no-op in any other process. Such a child imports its parent's main module (for
    the command line, flows.finetune: many seconds on a busy machine) before Dask's own parent watch starts, and a
    ``kill -9`` of the flow process in that window left the workers and multiprocessing's resource tracker alive
    until their imports ended. The flows and r1lib packages call this first (the entries ``python -m flows.*`` and
    ``r1-finetune``), so the watch starts before those imports; once per process. A flow run that a Prefect worker
    starts (``python -m prefect.engine``) keeps the window: its workers import none of this before Dask's watch.

    A thread polling the parent's pid, not PR_SET_PDEATHSIG: that signal follows the thread that started the child
    (Dask's, which may end before the worker does), not the process."""
    if sys.orig_argv[-1:] != ["--multiprocessing-fork"]:  # the last word of spawn's command line
        return
    parent = os.getppid()
    if parent == 1:
        # Either the parent is a container's init (its death ends the whole pid namespace) or it died before this
        # ran and this child was re-parented: the two look alike here, and exiting would kill every worker of a flow
        # that runs as PID 1, so the watch is left to Dask's own, as before it.
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="die with spawning parent", daemon=True).start()


@contextlib.contextmanager
def restored_environ(keys: str | Iterable[str]) -> Iterator[None]:
    """The block may set or remove ``keys`` (one name or several) in ``os.environ``; each is back as it was when the
    block ends."""
    saved = {key: os.environ.get(key) for key in ([keys] if isinstance(keys, str) else keys)}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
