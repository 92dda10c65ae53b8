"""The Prefect server killed with SIGKILL while the command (``r1-finetune run``: r1lib/ops/cli.run_command) runs a
task: the command exits 3 with one message naming the server, instead of retrying the task on ConnectError and then
hanging after "Finished in state Running()"; the task's work goes on while the server is gone (its reports to the
API are best-effort, r1lib/ops/api_watch.ApiReports).

A server of its own (the session's ``stack`` serves the other server tests) and a stand-in flow: a task that does a
step a second and reports its progress, as the train stage does. The watch's outage limit is cut to 15 s here."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest
from server_stack import PREFECT, ROOT, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

OUTAGE_S = 15.0
COMMAND = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prefect import flow, task
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    import r1lib.ops.api_watch as api_watch
    from r1lib.ops.cli import run_command

    api_watch.OUTAGE_S, api_watch.POLL_S = float(sys.argv[2]), 1.0
    steps = Path(sys.argv[1])

    @task(retries=2, retry_delay_seconds=1)
    def work() -> int:
        reports = api_watch.ApiReports()
        progress = reports(create_progress_artifact, progress=0.0, key="stand-in-progress")
        for step in range(1, 600):
            steps.write_text(str(step))
            reports(update_progress_artifact, artifact_id=progress, progress=step / 6)
            time.sleep(1)
        return step

    @flow
    def stand_in(config) -> int:
        return work()

    sys.exit(run_command(stand_in, ["--preset", "tiny"]))
""")


def test_a_killed_server_ends_the_command_naming_it_and_the_work_goes_on(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
    }
    server = subprocess.Popen(
        [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(tmp_path / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    command = None
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(1)
        steps = tmp_path / "steps"
        command = subprocess.Popen(
            [sys.executable, "-c", COMMAND, str(steps), str(OUTAGE_S)],
            cwd=ROOT,
            env={**env, "PREFECT_API_URL": url},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 180
        while not (steps.exists() and int(steps.read_text() or 0) >= 2):
            assert command.poll() is None and time.monotonic() < deadline, command.communicate()
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGKILL)
        killed_at, step_at_kill = time.monotonic(), int(steps.read_text())
        stdout, stderr = command.communicate(timeout=OUTAGE_S + 60)  # a hang fails here
        seconds = time.monotonic() - killed_at
    finally:
        if command is not None and command.poll() is None:
            command.kill()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
    print(f"exit {command.returncode} {seconds:.1f} s after the kill; steps {step_at_kill} -> {steps.read_text()}")
    assert command.returncode == 3, stderr[-3000:]
    assert f"the Prefect server at {url} has not answered for {OUTAGE_S:g} s" in stderr, stderr[-3000:]
    assert "Traceback" not in stderr and "Finished in state" not in stdout + stderr, stderr[-3000:]
    assert "Retry 1/2" not in stdout + stderr, "the task was retried on the dead server"
    assert int(steps.read_text()) >= step_at_kill + 5, "the task's work stopped with the server"
