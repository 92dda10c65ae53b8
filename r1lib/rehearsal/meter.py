"""Measuring a flow run stage by stage: wall seconds, peak GPU memory, peak host RSS, disk written.

A sampler thread reads, every ``interval`` seconds, the process tree's resident memory (the flow process and its
children: converter, quantizer, smoke-test processes, torchrun ranks), PyTorch's peak allocated and reserved GPU
memory since the last sample (then resets the peaks, so every interval has its own exact peak), the device's used
memory as the driver reports it (all processes), and (every second) the bytes under the rehearsal's folder. After the
run, the
stages' start and end times come from Prefect's own task-run records, and each stage gets the peaks of the intervals
that overlap it.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from r1lib.stages import stage_of_task

GIB = 2**30


class Sampler(threading.Thread):
    def __init__(self, disk_path: Path, interval: float = 0.25, on_sample=None):
        super().__init__(daemon=True, name="rehearsal-sampler")
        self.disk_path = Path(disk_path)
        self.interval = interval
        self.on_sample = on_sample  # called after each sample (the rehearsal's disk housekeeping)
        self.samples: list[dict] = []
        self._halt = threading.Event()
        self._disk = (0.0, 0)  # (wall time of the walk, bytes): the folder is walked at most twice a second

    def _rss(self) -> int:
        import psutil

        me = psutil.Process()
        total = me.memory_info().rss
        for child in me.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _disk_bytes(self) -> tuple[float, int]:
        if time.time() - self._disk[0] >= 0.5:
            self._disk = (time.time(), folder_bytes(self.disk_path))
        return self._disk

    def sample(self) -> dict:
        walked, disk = self._disk_bytes()
        point = {"t": time.time(), "rss": self._rss(), "disk": disk, "disk_t": walked}
        import torch

        if torch.cuda.is_available():
            point["gpu_allocated"] = torch.cuda.max_memory_allocated()
            point["gpu_reserved"] = torch.cuda.max_memory_reserved()
            torch.cuda.reset_peak_memory_stats()
            free, total = torch.cuda.mem_get_info()
            point["device_used"] = total - free
        return point

    def run(self) -> None:
        import torch

        if torch.cuda.is_available():  # peaks from before the flow (building the model) are not a stage's
            torch.cuda.reset_peak_memory_stats()
        while not self._halt.is_set():
            self.samples.append(self.sample())
            if self.on_sample:
                self.on_sample()
            self._halt.wait(self.interval)

    def stop(self) -> list[dict]:
        self._halt.set()
        self.join(timeout=10)
        self.samples.append(self.sample())
        return self.samples


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (files that vanish while it is walked are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def stage_of(task_key: str, run_name: str) -> str:
    """The pipeline stage a Prefect task run belongs to, from its task's function name (``train_task-1a2b``), as
    declared in r1lib/stages.py; a quantize run keeps its run name (``quantize Q8_0``)."""
    return stage_of_task(task_key.rsplit("-", 1)[0], run_name)


def task_runs_since(started: datetime) -> list[dict]:
    """Every task run that started after ``started``, from the Prefect API this process uses."""
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterStartTime

    runs = []
    with get_client(sync_client=True) as client:
        while True:  # the API returns at most 200 a page
            page = client.read_task_runs(
                task_run_filter=TaskRunFilter(start_time=TaskRunFilterStartTime(after_=started)),
                limit=200,
                offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                break
    now = time.time()
    return [
        {
            "stage": stage_of(r.task_key, r.name),
            "start": r.start_time.timestamp(),
            "end": r.end_time.timestamp() if r.end_time else now,  # still running: up to now
            "state": r.state_name,
        }
        for r in runs
        if r.start_time is not None
    ]


def stage_table(runs: list[dict], samples: list[dict], flow_start: float, flow_end: float) -> dict[str, dict]:
    """Per stage, in order of first start: seconds (from its first task run's start to its last one's end), share
    of the flow's wall time, peak GPU allocated/reserved (PyTorch, this process), peak device memory used (driver,
    all processes), peak RSS of the process tree, and the disk growth over the stage."""
    total = max(flow_end - flow_start, 1e-9)
    spans: dict[str, list[float]] = {}
    for run in runs:
        span = spans.setdefault(run["stage"], [run["start"], run["end"]])
        span[0], span[1] = min(span[0], run["start"]), max(span[1], run["end"])
    table = {}
    previous = flow_start

    def disk_at(moment: float) -> int:  # the first folder walk made at or after ``moment``
        return next((s["disk"] for s in samples if s.get("disk_t", s["t"]) >= moment), samples[-1]["disk"])

    for stage, (start, end) in sorted(spans.items(), key=lambda item: item[1][0]):
        inside = [s for s in samples if start <= s["t"] <= end + 0.5] or [min(samples, key=lambda s: abs(s["t"] - end))]
        row = {
            "seconds": round(end - start, 2),
            "start_s": round(start - flow_start, 2),  # from the flow's start: which stages ran together
            "end_s": round(end - flow_start, 2),
            "share": round((end - start) / total, 4),
            "peak_rss_gib": round(max(s["rss"] for s in inside) / GIB, 2),
            "disk_written_gib": round((disk_at(end) - disk_at(start)) / GIB, 3),
        }
        if "gpu_reserved" in inside[0]:
            row["peak_gpu_allocated_gib"] = round(max(s["gpu_allocated"] for s in inside) / GIB, 2)
            row["peak_gpu_reserved_gib"] = round(max(s["gpu_reserved"] for s in inside) / GIB, 2)
            row["peak_device_used_gib"] = round(max(s["device_used"] for s in inside) / GIB, 2)
        else:
            row["peak_gpu_allocated_gib"] = row["peak_gpu_reserved_gib"] = row["peak_device_used_gib"] = None
        row["gap_before_s"] = round(max(0.0, start - previous), 2)  # Prefect scheduling, flow code between stages
        previous = max(previous, end)
        table[stage] = row
    return table


def now_utc() -> datetime:
    return datetime.now(UTC)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
