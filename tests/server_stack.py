"""The Prefect stack the server tests run against (tests/flows/test_server.py, tests/flows/test_server_crash.py).

One server per session (the ``stack`` fixture of tests/conftest.py, shared by both modules): its database is SQLite,
or a PostgreSQL database of its own (created here, dropped on teardown) when R1_TEST_DATABASE_URL names a role that
may create databases (.ci/run starts scripts/postgres for it).
PREFECT_HOME is a fresh temp dir, everything listens on loopback, and R1_PROJECT_DIR is unset. Against that empty
server the README's deploy command (DEPLOY_COMMAND) creates the two work pools (``local-process``, and ``gpu`` of type
``process`` standing in for the Docker/Kubernetes GPU pool: the deployment is the same), the ``gpu`` global
concurrency limit and the deployments; then one worker per pool starts. Every process started here is stopped in the
fixture's teardown: the server and the workers by process group (TERM, then KILL), and the flow-run processes the
workers started (each in a session of its own) by their process ids.

Runs are kept small through run parameters (``small_config``: a 120-row training file, a few optimizer steps, a few
held-out rows, one quantization).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
# How README.md tells a user to create the pools, the GPU limit and the deployments.
DEPLOY_COMMAND = (".venv/bin/python", "-m", "r1lib.ops.deploy")
RUN_TIMEOUT = 1500  # seconds for one flow run on a busy two-core machine
STOP_GRACE = 5  # seconds the server and workers get after SIGTERM on teardown: no flow run is left for them to save
# postgresql+asyncpg://user:password@host:port/db of a role with CREATEDB (scripts/postgres prints one); unset: SQLite.
DATABASE_URL = os.environ.get("R1_TEST_DATABASE_URL")

# Loaded by every Python process the workers start (PYTHONPATH), it wraps tasks.smoke.smoke_test, the real and late
# stage, without touching its code (its TASK_SOURCE cache key stays the same): while <fault dir>/fail-smoke-test
# exists the stage fails; while <fault dir>/hold-smoke-test exists it writes <fault dir>/smoke-test-started and
# waits, so that a test can kill the flow-run process in the middle of it.
FAULT_HOOK = """
import importlib.abc, os, sys, time

FAULTS = os.environ.get("R1_TEST_FAULT_DIR")


class _InjectSmokeFault(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tasks.smoke" or not FAULTS:
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(name, path, target)
                if spec is not None:
                    break
        else:
            return None
        original = spec.loader.exec_module

        def exec_module(module):
            original(module)
            real = module.smoke_test

            def smoke_test(*args, **kwargs):
                fail, hold = os.path.join(FAULTS, "fail-smoke-test"), os.path.join(FAULTS, "hold-smoke-test")
                if os.path.exists(fail):
                    raise RuntimeError(f"injected fault: {fail} exists")
                if os.path.exists(hold):
                    open(os.path.join(FAULTS, "smoke-test-started"), "w").close()
                    while os.path.exists(hold):
                        time.sleep(0.2)
                return real(*args, **kwargs)

            module.smoke_test = smoke_test

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _InjectSmokeFault())
"""


def postgres(sql: str) -> None:
    """One statement on R1_TEST_DATABASE_URL's database, outside a transaction (CREATE/DROP DATABASE need that)."""
    import asyncio

    import asyncpg  # a dependency of prefect

    async def run():
        conn = await asyncpg.connect(DATABASE_URL.replace("postgresql+asyncpg://", "postgresql://", 1))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """The server, the workers, and how to talk to them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults = tmp / "faults"  # FAULT_HOOK's marker files
        self.faults.mkdir()
        self.fault_file = self.faults / "fail-smoke-test"
        self.hold_file = self.faults / "hold-smoke-test"
        self.held_file = self.faults / "smoke-test-started"
        self.database = f"r1_test_{uuid.uuid4().hex[:12]}" if DATABASE_URL else None
        if self.database:
            postgres(f"CREATE DATABASE {self.database}")
        hook_dir = tmp / "hook"
        hook_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(FAULT_HOOK)
        self.env = {
            # Not R1_PROJECT_DIR: the deploy command must place the nightly in this checkout without it.
            **{k: v for k, v in os.environ.items() if k != "R1_PROJECT_DIR"},
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_API_URL": f"{self.url}/api",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_API_DATABASE_CONNECTION_URL": (
                urlsplit(DATABASE_URL)._replace(path=f"/{self.database}").geturl()
                if self.database
                else f"sqlite+aiosqlite:///{tmp}/prefect.db"
            ),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            "PREFECT_CLI_PROMPT": "false",
            "DO_NOT_TRACK": "1",
            "R1_TEST_FAULT_DIR": str(self.faults),
            "PYTHONPATH": os.pathsep.join([str(hook_dir), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen(
            [PREFECT, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc))
        return proc

    def deploy(self, *args: str) -> str:
        """The README's deploy command (DEPLOY_COMMAND) against this stack's server; its output."""
        proc = subprocess.run(
            [sys.executable, *DEPLOY_COMMAND[1:], *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{' '.join(DEPLOY_COMMAND)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def pause_schedules(self) -> None:
        """The nightly's 02:00 schedule would start a real-model run on the gpu worker if a test ran across 02:00
        Berlin time: tests start every run themselves."""
        from prefect.client.schemas.filters import DeploymentFilter

        with self.client() as client:
            for deployment in client.read_deployments(deployment_filter=DeploymentFilter()):
                for schedule in deployment.schedules:
                    client.update_deployment_schedule(deployment.id, schedule.id, active=False)

    def cli(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([PREFECT, *args], cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def flow_run_pids(self, flow_run_id: str | None = None) -> list[int]:
        """Processes the workers started for this stack's flow runs (or for one of them), with their children.

        Found by their environment (the API URL is this stack's, the worker sets PREFECT__FLOW_RUN_ID), so nothing
        of another test or another user is ever signalled."""
        api, found = f"PREFECT_API_URL={self.url}/api".encode(), []
        for entry in Path("/proc").iterdir():
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
            except (OSError, ValueError):  # not a process, gone, or not ours to read
                continue
            run = next((v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"PREFECT__FLOW_RUN_ID=")), None)
            if api in environ and run and (flow_run_id is None or run == flow_run_id):
                found.append(int(entry.name))
        return sorted(found)

    def stop(self) -> None:
        for pid in self.flow_run_pids():  # in sessions of their own: not reached through the workers' groups
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # TERM to every group at once, then one shared grace: waiting 20 s per process in turn cost 40 s of teardown
        # (tests/flows/test_server_crash.py's, the slowest item list of a whole suite run) with no run left to save.
        running = [(name, proc) for name, proc in reversed(self.procs) if proc.poll() is None]
        for _, proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # the worker's and server's children too
        grace = time.monotonic() + STOP_GRACE
        for name, proc in running:
            try:
                proc.wait(timeout=max(0.1, grace - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"{name} still running {STOP_GRACE} s after SIGTERM: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self.database:
            postgres(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # --- API --------------------------------------------------------------------------------------------------------

    def client(self):
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(f"{self.url}/api")

    def run_deployment(self, name: str, parameters: dict) -> str:
        with self.client() as client:
            deployment = client.read_deployment_by_name(name)
            run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
        return str(run.id)

    def wait(self, flow_run_id: str, timeout: float = RUN_TIMEOUT, after: float | None = None):
        """Wait until the flow run is final (and, with ``after``, was last set so after that time)."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                run = client.read_flow_run(flow_run_id)
                final = run.state and run.state.is_final()
                fresh = after is None or (run.state.timestamp.timestamp() > after)
                if final and fresh:
                    return run
                for name, proc in self.procs:
                    assert proc.poll() is None, f"{name} died:\n{self.log(name)}"
                assert time.monotonic() < deadline, (
                    f"flow run {flow_run_id} still {run.state.name}\n"
                    f"{self.log('worker-local')}\n{self.log('worker-gpu')}"
                )
                time.sleep(1)  # every second idle here is a second of the suite

    @staticmethod
    def _family(client, flow_run_id: str) -> tuple[list[uuid.UUID], set[uuid.UUID]]:
        """A flow run with its sub-flow runs (the data stages), and the task runs that stand for those sub-flows in
        their parents."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

        ids, stand_ins, runs = [], set(), [uuid.UUID(flow_run_id)]
        while runs:
            ids += runs
            subflows = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=runs))
            )
            stand_ins |= {run.parent_task_run_id for run in subflows}
            runs = [run.id for run in subflows]
        return ids, stand_ins

    def task_runs(self, flow_run_id: str) -> list:
        """The task runs of a flow run and of its sub-flow runs (not those that only stand for a sub-flow)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self.client() as client:
            ids, stand_ins = self._family(client, flow_run_id)
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
        return [task for task in tasks if task.id not in stand_ins]

    def artifacts(self, flow_run_id: str) -> dict[str, list]:
        """The artifacts of a flow run and of its sub-flow runs, by key, oldest first (a retried run has one per
        attempt that ran the stage: [-1] is the last)."""
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with self.client() as client:
            ids, _ = self._family(client, flow_run_id)
            found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)))
        by_key: dict[str, list] = {}
        for artifact in sorted(found, key=lambda artifact: artifact.created):
            by_key.setdefault(artifact.key, []).append(artifact)
        return by_key

    def unfinished_task_runs(self, flow_run_id: str) -> list:
        """Task runs of the flow run and its sub-flow runs that are not in a final state."""
        return [t for t in self.task_runs(flow_run_id) if not (t.state and t.state.is_final())]

    def gpu_slots_in_use(self) -> int:
        with self.client() as client:
            return client.read_global_concurrency_limit_by_name("gpu").active_slots

    def logs(self, flow_run_id: str) -> list[str]:
        """The log messages of a flow run and of its sub-flow runs, oldest first."""
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        found = []
        with self.client() as client:
            ids, _ = self._family(client, flow_run_id)
            while True:  # the API returns 200 at most per call
                page = client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)), limit=200, offset=len(found)
                )
                found += page
                if len(page) < 200:
                    break
        return [log.message for log in sorted(found, key=lambda log: log.timestamp)]

    def kill_flow_run_process(self, flow_run_id: str) -> int:
        """SIGKILL the flow-run process (``python -m prefect.engine`` that the worker started, not one of its
        children): what the OOM killer or a preempted machine does. Its pid."""
        pids = self.flow_run_pids(flow_run_id)
        (engine,) = [pid for pid in pids if _parent(pid) not in pids]
        os.kill(engine, signal.SIGKILL)
        return engine

    def flow_runs_of(self, flow_name: str) -> list:
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        with self.client() as client:
            return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


@contextlib.contextmanager
def running_stack(tmp: Path):
    """The server, deployed by DEPLOY_COMMAND, with one worker per pool; everything stopped on exit."""
    stack = Stack(tmp)
    try:
        started = time.monotonic()
        stack.start("server", "server", "start", "--host", "127.0.0.1", "--port", str(stack.port))
        import urllib.request

        while True:
            try:
                with urllib.request.urlopen(f"{stack.url}/api/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() - started < 180, f"server did not start:\n{stack.log('server')}"
            time.sleep(1)
        print(f"server healthy after {time.monotonic() - started:.1f} s")
        stack.deploy_output = stack.deploy()
        stack.pause_schedules()
        stack.start("worker-local", "worker", "start", "--pool", "local-process", "--limit", "1")
        stack.start("worker-gpu", "worker", "start", "--pool", "gpu", "--limit", "1")
        yield stack
    finally:
        stack.stop()


def head(source: str, target: Path, lines: int) -> str:
    if not target.exists():
        rows = (ROOT / source).read_text(encoding="utf-8").splitlines(keepends=True)
        target.write_text("".join(rows[:lines]), encoding="utf-8")
    return str(target)


def small_config(tmp: Path, name: str | None, **sections) -> dict:
    """A partial PipelineConfig (applied over the tiny preset): two gentle steps on small files.

    A gentle learning rate on purpose: a few steps at the tiny preset's 1e-2 leave the model between formats (its
    GGUF then fails the smoke test's closed-<think> check); at 2e-4 it stays close to the base, which passes."""
    config = {
        "preset": "tiny",
        "run_name": name,
        "runs_dir": str(tmp / "runs"),
        "data": {
            "train_paths": [head("data/sample/train.jsonl", tmp / "train-small.jsonl", 120)],
            "test_path": head("data/sample/test.jsonl", tmp / "test-small.jsonl", 30),
            "replay_path": head("data/sample/general.jsonl", tmp / "replay-small.jsonl", 20),
            "allowed_roots": [str(tmp), "{project}/data"],
        },  # the shipped templates, debias lists, corpus
        "augment": {"prompt_variants": 0, "replay_ratio": 0.2},
        "train": {"max_steps": 2, "micro_batch_size": 8, "save_steps": 1, "logging_steps": 1, "learning_rate": 2e-4},
        "evaluate": {"max_examples": 4, "batch_size": 4, "max_new_tokens": 16},
        "export": {"quantizations": ["Q8_0"]},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


def stage(name: str) -> str:
    """A task run's name without Prefect's random suffix (``dedup-3f2`` -> ``dedup``); readable names stay."""
    return re.sub(r"-[0-9a-f]{3}$", "", name)


# --- one finetune run through four attempts: crashed twice, failed once, then completed ---------------------------
# What tests/flows/test_server_crash.py (the kills) and test_server.py (the failed late stage, the artifacts, the run
# graph and the UI) check, from one deployment run (they used to start one run each: the 2-step failed-then-retried
# run cost a whole flow run more).
CRASH_STEPS, CRASH_SAVE_STEPS = 12, 2  # a kill after the first checkpoint still finds ten steps to go


def kind(task) -> str:
    """A task run's stage, as the declared stage name up to its first dash (resolve-model -> resolve)."""
    return stage(task.name).split(" ")[0].split("-")[0]


def mtimes(run_dir: Path, skip: str = "train") -> dict[str, int]:
    """mtime of every file in the run directory outside ``skip`` (not the ``datasets`` caches that readers add, nor
    the lock a run holds on its folder)."""
    return {
        str(p.relative_to(run_dir)): p.stat().st_mtime_ns
        for p in run_dir.rglob("*")
        if p.is_file()
        and p.relative_to(run_dir).parts[0] != skip
        and not p.name.startswith("cache-")
        and p.relative_to(run_dir) != Path(".lock")
    }


def wait_until(condition, run_id: str, what: str, stack: Stack) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        with stack.client() as client:
            state = client.read_flow_run(run_id).state
        assert not state.is_final(), f"the run ended before {what}: {state}"
        assert time.monotonic() < deadline, f"no {what}\n{stack.log('worker-local')}"
        time.sleep(0.3)


def retry(stack: Stack, run_id: str):
    """``prefect flow-run retry`` and wait for the run to end; (the run, the task runs of this attempt, seconds)."""
    before = {t.id for t in stack.task_runs(run_id)}
    retry_at, started = time.time(), time.monotonic()
    stack.cli("flow-run", "retry", run_id)
    run = stack.wait(run_id, after=retry_at)
    return run, [t for t in stack.task_runs(run_id) if t.id not in before], time.monotonic() - started


def wait_for_worker_crash_report(stack: Stack, run_id: str, reports: int, limit: float = 30.0) -> None:
    """Wait (at most ``limit`` s) until the workers have handled ``reports`` kills of ``run_id``: a worker reports a
    killed run as Crashed seconds after the run's own report, and a retry issued in between is overwritten by it (the
    retried run reads Crashed). The worker logs "Reported ..." only when its proposal changed the state; either way it
    then logs the SIGKILL resolution line (prefect/workers/base.py), so that line ends the wait too: waiting for a
    report that never came cost the whole ``limit``."""
    reported = f"prefect.flow_runs.worker - Reported flow run '{run_id}' as crashed"  # not the runner's own report
    handled = "prefect.flow_runs.worker - Check whether the flow run exceeded its memory allocation"  # after a -9
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        logs = [
            (stack.tmp / f"{name}.log").read_text(errors="replace")
            for name in ("worker-local", "worker-gpu")
            if (stack.tmp / f"{name}.log").exists()
        ]
        if sum(log.count(reported) for log in logs) >= reports or sum(log.count(handled) for log in logs) >= reports:
            return
        time.sleep(0.5)


def crash_fail_and_retry(stack: Stack) -> dict:
    """A finetune deployment run (12 steps, a checkpoint every 2) through four attempts; what each left:

    1. SIGKILL of the flow-run process while training, after a checkpoint (Crashed);
    2. retry 1: resumes training; SIGKILL while the smoke test runs (Crashed);
    3. retry 2: every finished stage from the cache; the smoke test fails (injected), is retried once and fails
       again (Failed);
    4. retry 3: the smoke test passes (Completed), every other stage from the cache."""
    config = small_config(stack.tmp, "server-crash", train={"max_steps": CRASH_STEPS, "save_steps": CRASH_SAVE_STEPS})
    run_id = stack.run_deployment("r1-finetune/finetune-local", {"config": config})
    run_dir = stack.tmp / "runs" / "server-crash"
    checkpoints = "train/checkpoints/*/checkpoint-*/checkpoint-complete.json"
    out = {"id": run_id, "run_dir": run_dir}

    # Kill 1: the train stage is running and at least one checkpoint is complete on disk.
    def training_with_checkpoint() -> bool:
        if not list(run_dir.glob(checkpoints)):
            return False
        return "train" in {kind(t) for t in stack.unfinished_task_runs(run_id) if t.state.type.value == "RUNNING"}

    wait_until(training_with_checkpoint, run_id, "checkpoint while training", stack)
    stack.hold_file.write_text("the smoke test waits while this file exists")  # for kill 2, read only by retry 1
    out["pid1"] = stack.kill_flow_run_process(run_id)
    killed_at = time.monotonic()
    out["checkpoints1"] = sorted(p.parent.name for p in run_dir.glob(checkpoints))
    assert not (run_dir / "train" / "adapter").exists(), "training finished before the kill"
    out["first"] = stack.wait(run_id)
    out["crash1_seconds"] = time.monotonic() - killed_at
    wait_for_worker_crash_report(stack, run_id, 1)
    out["first_tasks"] = stack.task_runs(run_id)
    out["left_running1"] = [t.name for t in stack.unfinished_task_runs(run_id)]
    out["slots_after_kill1"] = stack.gpu_slots_in_use()
    out["before1"] = mtimes(run_dir)  # what the stages before training wrote

    # Retry 1: resumes training, and is killed 2 while the smoke test runs.
    retry_at = time.time()
    stack.cli("flow-run", "retry", run_id)
    wait_until(stack.held_file.exists, run_id, "smoke test", stack)
    with stack.client() as client:
        out["attempt2"] = client.read_flow_run(run_id)
    out["logs_attempt2"] = stack.logs(run_id)
    out["pid2"] = stack.kill_flow_run_process(run_id)
    stack.hold_file.unlink()
    out["second"] = stack.wait(run_id, after=retry_at)
    wait_for_worker_crash_report(stack, run_id, 2)
    first_ids = {t.id for t in out["first_tasks"]}
    out["second_tasks"] = [t for t in stack.task_runs(run_id) if t.id not in first_ids]
    out["left_running2"] = [t.name for t in stack.unfinished_task_runs(run_id)]
    out["summary2"] = json.loads((run_dir / "train" / "result.json").read_text())
    out["before2"] = mtimes(run_dir, skip="smoke")

    # Retry 2: every stage that had finished comes from the cache; the smoke test fails (injected).
    stack.fault_file.write_text("fail the smoke test until this file is gone")
    out["third"], out["third_tasks"], out["retry2_seconds"] = retry(stack, run_id)
    out["left_running3"] = [t.name for t in stack.unfinished_task_runs(run_id)]
    adapter = run_dir / "train" / "adapter"
    out["adapter"] = adapter
    out["adapter_mtimes"] = {p.name: p.stat().st_mtime_ns for p in adapter.iterdir()} if adapter.exists() else {}

    # Retry 3: the smoke test passes; everything else from the cache.
    stack.fault_file.unlink()
    out["fourth"], out["fourth_tasks"], out["retry3_seconds"] = retry(stack, run_id)
    out["slots_at_end"] = stack.gpu_slots_in_use()
    out["all_tasks"] = stack.task_runs(run_id)
    with stack.client() as client:
        from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId

        out["top_level"] = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id]))
        )
    print(
        f"kill 1 (pid {out['pid1']}) after {out['checkpoints1']}: Crashed in {out['crash1_seconds']:.1f} s, left "
        f"{out['left_running1']} Running and {out['slots_after_kill1']} GPU slot(s) held; kill 2 (pid {out['pid2']}) "
        f"in the smoke test left {out['left_running2']}; retry 2 (smoke test failing) took "
        f"{out['retry2_seconds']:.1f} s: { {stage(t.name): t.state.name for t in out['third_tasks']} }; retry 3 took "
        f"{out['retry3_seconds']:.1f} s"
    )
    return out
