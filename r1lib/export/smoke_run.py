"""The smoke test's llama-cpp-python children: one per GGUF, all started at once, collected in order.

Each child is a fresh, bare interpreter (``python -c`` with r1lib/export/gguf.py's child functions: nothing of the
pipeline is imported) that loads one GGUF and prints one JSON line, so a crash inside llama.cpp fails the check
naming that GGUF instead of the worker. They run at the same time and share the cores (``child_threads``), and the
caller computes its HF reference while they run (tasks/smoke.py). Their output goes to temporary files, not pipes,
so a chatty child never blocks on a full pipe while its sibling is collected.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from r1lib.errors import ExportCheckError
from r1lib.export.gguf import SMOKE_CHILD, offline_env
from r1lib.process import die_with_parent


def child_threads(budget: int | None, children: int) -> int:
    """llama.cpp threads for each of ``children`` running at once: ``budget`` (None: every core) shared among them."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, (budget or cores) // max(children, 1))


def result_lines(stdout: str | bytes | None) -> list[dict]:
    """The JSON objects a child printed, one per line (anything else it printed is skipped)."""
    text = stdout.decode("utf-8", "replace") if isinstance(stdout, bytes) else stdout or ""
    lines = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            lines.append(value)
    return lines


class SmokeChildren:
    """One child per job (``run_gguf``'s keyword arguments), started on construction; ``results()`` waits for them
    within ``limit`` seconds from the start, in job order, and raises ExportCheckError naming the first GGUF whose
    child crashed, hung or printed no result (the others are killed then)."""

    def __init__(self, jobs: list[dict], limit: float):
        self.jobs, self.limit, self.started = jobs, limit, time.monotonic()
        self.outputs = [(tempfile.TemporaryFile(), tempfile.TemporaryFile()) for _ in jobs]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", SMOKE_CHILD, "smoke", json.dumps([job])],
                stdout=out,
                stderr=err,
                env=offline_env(),
                preexec_fn=die_with_parent(),
            )
            for job, (out, err) in zip(jobs, self.outputs)
        ]

    def results(self) -> list[dict]:
        try:
            return [self._result(i) for i in range(len(self.jobs))]
        finally:
            self.stop()

    def _result(self, i: int) -> dict:
        path, proc = self.jobs[i]["path"], self.procs[i]
        try:
            proc.wait(timeout=max(0.1, self.limit - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            raise ExportCheckError(f"{path}: the smoke test took longer than {self.limit:g} s") from None
        stdout, stderr = (self._read(handle) for handle in self.outputs[i])
        if proc.returncode != 0:
            raise ExportCheckError(f"{path}: llama-cpp-python exited with {proc.returncode}:\n{stderr[-2000:]}")
        lines = result_lines(stdout)
        if not lines:
            raise ExportCheckError(f"{path}: no result from the smoke child:\n{stdout[-1000:]}")
        return lines[0]

    @staticmethod
    def _read(handle) -> str:
        handle.seek(0)
        return handle.read().decode("utf-8", "replace")

    def stop(self) -> None:
        """Kill the children still running and close their output files."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for out, err in self.outputs:
            out.close()
            err.close()
