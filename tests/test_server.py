"""End to end against a real Prefect server: prefect.yaml deployments, work pools, workers, retries, nightly, the UI.

One module-scoped server (SQLite, PREFECT_HOME in a temp dir, loopback only), two work pools of type ``process``
(``local-process``, and ``gpu`` standing in for the Docker/Kubernetes GPU pool: the deployment is the same), the ``gpu``
global concurrency limit, ``prefect deploy --all`` from the project's prefect.yaml, and one worker per pool. Every
process started here is stopped (process group: TERM, then KILL) in the fixture's teardown.

Runs are kept small through deployment parameters (a 120-row training file, a few optimizer steps, a few held-out
rows, one quantization). Marked ``server`` and ``slow``: ``scripts/test -m "not server"`` skips them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.server, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).with_name("prefect"))
RUN_TIMEOUT = 1500  # seconds for one flow run on a busy two-core machine

# Loaded by every Python process the workers start (PYTHONPATH), it wraps tasks.smoke.smoke_test so that the smoke
# stage fails while the marker file exists: a failure injected into the real, late stage without touching its code
# (its TASK_SOURCE cache key stays the same).
FAULT_HOOK = '''
import importlib.abc, os, sys

MARKER = os.environ.get("R1_TEST_FAULT_FILE")


class _InjectSmokeFault(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tasks.smoke" or not MARKER:
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
                if os.path.exists(MARKER):
                    raise RuntimeError(f"injected fault: {MARKER} exists")
                return real(*args, **kwargs)

            module.smoke_test = smoke_test

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _InjectSmokeFault())
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """The server, the workers, and how to talk to them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.fault_file = tmp / "fail-smoke-test"
        hook_dir = tmp / "hook"
        hook_dir.mkdir()
        (hook_dir / "sitecustomize.py").write_text(FAULT_HOOK)
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_API_URL": f"{self.url}/api",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp}/prefect.db",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "true",
            "PREFECT_WORKER_QUERY_SECONDS": "2",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            "PREFECT_CLI_PROMPT": "false",
            "DO_NOT_TRACK": "1",
            "R1_PROJECT_DIR": str(ROOT),
            "R1_TEST_FAULT_FILE": str(self.fault_file),
            "PYTHONPATH": os.pathsep.join([str(hook_dir), str(ROOT)]),
            "PYTHONUNBUFFERED": "1",
        }
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "w")
        proc = subprocess.Popen([PREFECT, *args], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def cli(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([PREFECT, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def stop(self) -> None:
        for name, proc in reversed(self.procs):
            if proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the worker's and server's children too
                proc.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)

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
                assert time.monotonic() < deadline, (f"flow run {flow_run_id} still {run.state.name}\n"
                                                     f"{self.log('worker-local')}\n{self.log('worker-gpu')}")
                time.sleep(3)

    def task_runs(self, flow_run_id: str) -> list:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with self.client() as client:
            return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])))

    def artifacts(self, flow_run_id: str) -> dict[str, list]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with self.client() as client:
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))
        by_key: dict[str, list] = {}
        for artifact in found:
            by_key.setdefault(artifact.key, []).append(artifact)
        return by_key

    def flow_runs_of(self, flow_name: str) -> list:
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName

        with self.client() as client:
            return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
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
        stack.cli("work-pool", "create", "local-process", "--type", "process")
        stack.cli("work-pool", "create", "gpu", "--type", "process")  # stands in for the Docker/Kubernetes GPU pool
        stack.cli("global-concurrency-limit", "create", "gpu", "--limit", "1")
        stack.cli("--no-prompt", "deploy", "--all")
        stack.start("worker-local", "worker", "start", "--pool", "local-process", "--limit", "1")
        stack.start("worker-gpu", "worker", "start", "--pool", "gpu", "--limit", "1")
        yield stack
    finally:
        stack.stop()


def _head(source: str, target: Path, lines: int) -> str:
    if not target.exists():
        rows = (ROOT / source).read_text(encoding="utf-8").splitlines(keepends=True)
        target.write_text("".join(rows[:lines]), encoding="utf-8")
    return str(target)


def _small_config(tmp: Path, name: str | None, **sections) -> dict:
    """A partial PipelineConfig (applied over the tiny preset): two gentle steps on small files.

    A gentle learning rate on purpose: a few steps at the tiny preset's 1e-2 leave the model between formats (its
    GGUF then fails the smoke test's closed-<think> check); at 2e-4 it stays close to the base, which passes."""
    config = {
        "preset": "tiny", "run_name": name, "runs_dir": str(tmp / "runs"),
        "data": {"train_paths": [_head("data/sample/train.jsonl", tmp / "train-small.jsonl", 120)],
                 "test_path": _head("data/sample/test.jsonl", tmp / "test-small.jsonl", 30),
                 "replay_path": _head("data/sample/general.jsonl", tmp / "replay-small.jsonl", 20)},
        "augment": {"prompt_variants": 0, "replay_ratio": 0.2},
        "train": {"max_steps": 2, "micro_batch_size": 8, "save_steps": 1, "logging_steps": 1, "learning_rate": 2e-4},
        "evaluate": {"max_examples": 4, "batch_size": 4, "max_new_tokens": 16},
        "export": {"quantizations": ["Q8_0"]},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    return config


STAGE_ARTIFACTS = {"validation-report", "bias-report", "tokenization-audit-train", "training-progress",
                   "training-loss", "evaluation", "gguf-smoke-test", "run-summary"}


@pytest.fixture(scope="module")
def retried_run(stack):
    """A finetune deployment run whose smoke-test stage fails (injected), then the same run retried."""
    tmp = stack.tmp
    stack.fault_file.write_text("fail the smoke test until this file is gone")
    run_id = stack.run_deployment("r1-finetune/finetune-local", {"config": _small_config(tmp, "server-retry")})
    first = stack.wait(run_id)
    first_tasks = stack.task_runs(run_id)
    adapter = tmp / "runs/server-retry/train/adapter"
    adapter_mtimes = {p.name: p.stat().st_mtime_ns for p in adapter.iterdir()} if adapter.exists() else {}

    stack.fault_file.unlink()
    retry_at = time.time()
    started = time.monotonic()
    stack.cli("flow-run", "retry", run_id)
    second = stack.wait(run_id, after=retry_at)
    retry_seconds = time.monotonic() - started
    return {"id": run_id, "first": first, "first_tasks": first_tasks, "second": second,
            "all_tasks": stack.task_runs(run_id), "retry_at": retry_at, "adapter": adapter,
            "adapter_mtimes": adapter_mtimes, "retry_seconds": retry_seconds}


def _stage(name: str) -> str:
    """A task run's name without Prefect's random suffix (``dedup-3f2`` -> ``dedup``); readable names stay."""
    return re.sub(r"-[0-9a-f]{3}$", "", name)


def test_failed_late_stage_then_retry_skips_finished_stages(retried_run):
    first, second = retried_run["first"], retried_run["second"]
    assert first.state.type.value == "FAILED", first.state
    failed = [t for t in retried_run["first_tasks"] if t.state.type.value == "FAILED"]
    assert [t.name.split(" ")[0] for t in failed] == ["smoke-test"], [(t.name, t.state.message) for t in failed]
    assert failed[0].run_count == 2, "a transient failure is retried once (backoff + jitter) before the stage fails"
    finished = {_stage(t.name) for t in retried_run["first_tasks"] if t.state.type.value == "COMPLETED"}
    assert {n.split(" ")[0].split("-")[0] for n in finished} >= {
        "validate", "augment", "debias", "tokenize", "train", "evaluate", "merge", "convert", "quantize"}, finished

    assert second.state.type.value == "COMPLETED", second.state
    assert second.run_count >= 2
    first_ids = {t.id for t in retried_run["first_tasks"]}
    again = {_stage(t.name): t.state.name for t in retried_run["all_tasks"] if t.id not in first_ids}
    print(f"retry took {retried_run['retry_seconds']:.1f} s; task runs of the retry: {again}")
    # Every stage that had finished came from the cache, not run again; the failed stage ran.
    assert {name: again.get(name) for name in finished} == {name: "Cached" for name in finished}
    assert again[_stage(failed[0].name)] == "Completed"
    # ...and the trained adapter on disk was not rewritten.
    assert {p.name: p.stat().st_mtime_ns for p in retried_run["adapter"].iterdir()} == retried_run["adapter_mtimes"]


def test_deployment_run_shows_every_stage_artifact(stack, retried_run):
    artifacts = stack.artifacts(retried_run["id"])
    assert STAGE_ARTIFACTS <= set(artifacts), sorted(artifacts)
    summary = artifacts["run-summary"][-1].data
    assert "r1-finetune run summary" in summary and "train" in summary
    table = artifacts["evaluation"][-1].data
    assert "perplexity" in (table if isinstance(table, str) else json.dumps(table))


def test_ui_shows_the_flow_run_and_its_artifacts(stack, retried_run):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with stack.client() as client:
        run_name = client.read_flow_run(retried_run["id"]).name
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-background-networking",
                                                   "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{stack.url}/runs/flow-run/{retried_run['id']}", wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text(run_name).first.wait_for(timeout=90_000)  # the flow run's page, by its readable name
            page.screenshot(path=str(stack.tmp / "ui-flow-run.png"))
            page.get_by_text("Artifacts", exact=True).filter(visible=True).first.click()  # its Artifacts tab
            page.get_by_text("run-summary").first.wait_for(timeout=90_000)
            text = page.inner_text("body")
            for key in ("run-summary", "evaluation", "gguf-smoke-test"):
                assert key in text, f"{key} not on the flow run's Artifacts tab"
            page.screenshot(path=str(stack.tmp / "ui-flow-run-artifacts.png"), full_page=True)
        finally:
            browser.close()


def _nightly_params(tmp: Path, drop: Path, **train) -> dict:
    return {"drop_url": str(drop), "registry_dir": str(tmp / "registry"),
            "config": _small_config(tmp, None, train=train),
            "policy": {"metric": "perplexity", "max_forgetting_ratio": None, "forgetting_tolerance": 10.0}}


def _decision(stack, run_id: str) -> str:
    return stack.artifacts(run_id)["nightly-decision"][-1].data


def test_nightly_promotes_skips_unchanged_data_and_keeps_a_better_champion(stack):
    from tasks.registry import Registry

    tmp = stack.tmp / "nightly"
    drop = tmp / "drop"
    drop.mkdir(parents=True)
    rows = (ROOT / "data/sample/train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (drop / "2026-11-27.jsonl").write_text("".join(rows[200:260]), encoding="utf-8")
    registry = Registry(tmp / "registry")

    # Night 1: new data, no champion yet -> the challenger beats the base model and is promoted.
    run1 = stack.run_deployment("r1-nightly-retrain/nightly-retrain", _nightly_params(tmp, drop))
    state = stack.wait(run1)
    assert state.state.type.value == "COMPLETED", state.state
    assert "promoted" in _decision(stack, run1)
    assert "champion-vs-challenger" in stack.artifacts(run1)
    champion = registry.champion()
    assert champion["version"] == 1 and champion["ggufs"] and Path(champion["ggufs"][0]["path"]).exists()
    assert champion["data_fingerprint"] and champion["code_version"] and champion["metrics"]["perplexity"] > 0
    finetune_runs = len(stack.flow_runs_of("r1-finetune"))

    # Night 2: the same data -> nothing to do, and nothing done.
    started = time.monotonic()
    run2 = stack.run_deployment("r1-nightly-retrain/nightly-retrain", _nightly_params(tmp, drop))
    state = stack.wait(run2)
    print(f"nightly on unchanged data: {time.monotonic() - started:.1f} s")
    assert state.state.type.value == "COMPLETED", state.state
    assert "Nothing new" in _decision(stack, run2)
    assert len(stack.flow_runs_of("r1-finetune")) == finetune_runs  # no training subflow
    assert [v["version"] for v in registry.versions()] == [1]

    # Night 3: new data, but a deliberately weak challenger (one step at a tiny learning rate) -> not promoted.
    (drop / "2026-11-28.jsonl").write_text("".join(rows[300:360]), encoding="utf-8")
    run3 = stack.run_deployment("r1-nightly-retrain/nightly-retrain",
                                _nightly_params(tmp, drop, max_steps=1, learning_rate=1e-7))
    state = stack.wait(run3)
    assert state.state.type.value == "COMPLETED", state.state
    decision = _decision(stack, run3)
    assert "rejected" in decision, decision
    assert registry.champion()["version"] == 1
    challenger = registry.get(2)
    assert challenger["status"] == "rejected" and not challenger["champion"]
    assert challenger["metrics"]["perplexity"] > champion["metrics"]["perplexity"]
    assert len(challenger["train_paths"]) == 3  # the base file + every accepted drop file
    table = stack.artifacts(run3)["champion-vs-challenger"][-1]
    assert "re-evaluated" in (table.description or "")
