"""The run's temporary Prefect server starts with a generous wait, stops with the run, and dies with it on kill -9.

The first tests drive r1lib/ops/local_server.py directly; the last one starts ``python -m flows.finetune`` (the demo's
command line), kills it with SIGKILL while its data stages run, and counts the processes it started that are left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT

HOLDER = """
import json, os, sys, time
from r1lib.ops.local_server import prefect_api
with prefect_api() as url:
    import psutil
    kids = [p.pid for p in psutil.Process().children(recursive=True)]
    print(json.dumps({"url": url, "children": kids}), flush=True)
    time.sleep(600)
"""


def survivors(pids: list[int], started_before: float) -> list[str]:
    """The processes among ``pids`` still running (not a later process that reuses a number)."""
    left = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            if process.create_time() <= started_before and process.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {' '.join(process.cmdline())[:200]}")
        except psutil.NoSuchProcess:
            pass
    return left


def clean_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


@pytest.mark.slow  # a real server start, a minute
def test_a_run_gets_a_server_that_stops_with_it(tmp_path, monkeypatch):
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from r1lib.ops.local_server import prefect_api

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    before = {p.pid for p in psutil.Process().children()}  # a shared server another test started may be there
    with temporary_settings(restore_defaults={PREFECT_API_URL}), prefect_api() as url:
        assert os.environ["PREFECT_API_URL"] == url and url.startswith("http://127.0.0.1:")
        [server] = [
            p
            for p in psutil.Process().children()
            if p.pid not in before and "r1lib.ops.local_server" in " ".join(p.cmdline())
        ]

        @flow
        def answer() -> int:
            return 42

        assert answer() == 42
    assert "PREFECT_API_URL" not in os.environ
    server.wait(timeout=15)
    assert not server.is_running()


def test_a_configured_server_is_used_as_it_is(monkeypatch):
    from r1lib.ops.local_server import prefect_api

    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    before = psutil.Process().children()
    with prefect_api() as url:
        assert url == "http://prefect.example:4200/api"
        assert psutil.Process().children() == before


def test_a_start_timeout_that_is_not_a_number_is_refused(monkeypatch):
    from r1lib.ops.local_server import start_timeout

    monkeypatch.setenv("R1_SERVER_START_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="R1_SERVER_START_TIMEOUT"):
        start_timeout()
    monkeypatch.setenv("R1_SERVER_START_TIMEOUT", "900")
    assert start_timeout() == 900


def test_the_projects_environment_gives_the_server_time_to_start():
    env = subprocess.run(
        ["bash", "-c", "source scripts/env.sh && env"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    values = dict(line.split("=", 1) for line in env.splitlines() if "=" in line)
    assert float(values["R1_SERVER_START_TIMEOUT"]) >= 300
    assert float(values["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 300


@pytest.mark.slow  # a real server start, a minute
def test_kill_9_of_the_holder_leaves_no_server(tmp_path):
    started = time.time()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER],
        cwd=ROOT,
        env=clean_env(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    info = json.loads(holder.stdout.readline())
    assert info["children"], "no server was started"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 15
    while survivors(info["children"], started + 120) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert survivors(info["children"], started + 120) == []


@pytest.mark.slow
def test_kill_9_of_the_command_line_mid_run_leaves_no_process_behind(tmp_path):
    """``python -m flows.finetune`` killed with SIGKILL while its validate stage runs: every process it started (the
    Prefect server above all) is gone within seconds."""
    started = time.time()
    runs = tmp_path / "runs"
    flow = subprocess.Popen(
        [sys.executable, "-m", "flows.finetune", "--set", f"runs_dir={runs}", "--set", "run_name=killed"],
        cwd=ROOT,
        env=clean_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen: set[int] = set()
    deadline = time.monotonic() + 600
    try:
        while not (runs / "killed" / "validate").exists():
            assert flow.poll() is None, "the flow ended before it could be killed"
            assert time.monotonic() < deadline, "the flow did not reach its first stage"
            seen |= {p.pid for p in psutil.Process(flow.pid).children(recursive=True)}
            time.sleep(0.2)
        seen |= {p.pid for p in psutil.Process(flow.pid).children(recursive=True)}
        assert seen, "the flow started no server"
    finally:
        flow.send_signal(signal.SIGKILL)
        flow.wait()
    deadline = time.monotonic() + 20
    while survivors(sorted(seen), started + 3600) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert survivors(sorted(seen), started + 3600) == []
