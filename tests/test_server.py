"""End to end against a real Prefect server: prefect.yaml deployments, work pools, workers, retries, nightly, the UI.

The server, work pools and workers come from tests/server_stack.py (one stack for this module). Runs are kept small
through deployment parameters. Marked ``server`` and ``slow``: ``scripts/test -m "not server"`` skips them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from server_stack import ROOT, small_config, stack, stage  # noqa: F401 (stack: the module's server fixture)

pytestmark = [pytest.mark.server, pytest.mark.slow]


STAGE_ARTIFACTS = {
    "validation-report",
    "bias-report",
    "tokenization-audit-train",
    "training-progress",
    "training-loss",
    "evaluation",
    "gguf-smoke-test",
    "run-summary",
}


@pytest.fixture(scope="module")
def retried_run(stack):
    """A finetune deployment run whose smoke-test stage fails (injected), then the same run retried."""
    tmp = stack.tmp
    stack.fault_file.write_text("fail the smoke test until this file is gone")
    run_id = stack.run_deployment("r1-finetune/finetune-local", {"config": small_config(tmp, "server-retry")})
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
    return {
        "id": run_id,
        "first": first,
        "first_tasks": first_tasks,
        "second": second,
        "all_tasks": stack.task_runs(run_id),
        "retry_at": retry_at,
        "adapter": adapter,
        "adapter_mtimes": adapter_mtimes,
        "retry_seconds": retry_seconds,
    }


def test_failed_late_stage_then_retry_skips_finished_stages(retried_run):
    first, second = retried_run["first"], retried_run["second"]
    assert first.state.type.value == "FAILED", first.state
    failed = [t for t in retried_run["first_tasks"] if t.state.type.value == "FAILED"]
    assert [t.name.split(" ")[0] for t in failed] == ["smoke-test"], [(t.name, t.state.message) for t in failed]
    assert failed[0].run_count == 2, "a transient failure is retried once (backoff + jitter) before the stage fails"
    finished = {stage(t.name) for t in retried_run["first_tasks"] if t.state.type.value == "COMPLETED"}
    assert {n.split(" ")[0].split("-")[0] for n in finished} >= {
        "validate",
        "augment",
        "debias",
        "tokenize",
        "train",
        "evaluate",
        "merge",
        "convert",
        "quantize",
    }, finished

    assert second.state.type.value == "COMPLETED", second.state
    assert second.run_count >= 2
    first_ids = {t.id for t in retried_run["first_tasks"]}
    again = {stage(t.name): t.state.name for t in retried_run["all_tasks"] if t.id not in first_ids}
    print(f"retry took {retried_run['retry_seconds']:.1f} s; task runs of the retry: {again}")
    # Every stage that had finished came from the cache, not run again; the failed stage ran.
    assert {name: again.get(name) for name in finished} == {name: "Cached" for name in finished}
    assert again[stage(failed[0].name)] == "Completed"
    # ...and the trained adapter on disk was not rewritten.
    assert {p.name: p.stat().st_mtime_ns for p in retried_run["adapter"].iterdir()} == retried_run["adapter_mtimes"]


def test_deployment_run_shows_every_stage_artifact(stack, retried_run):
    artifacts = stack.artifacts(retried_run["id"])
    assert STAGE_ARTIFACTS <= set(artifacts), sorted(map(str, artifacts))  # progress artifacts have no key
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
        browser = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-dev-shm-usage"],
        )
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
    return {
        "drop_url": str(drop),
        "registry_dir": str(tmp / "registry"),
        "config": small_config(tmp, None, train=train),
        "policy": {"metric": "perplexity", "max_forgetting_ratio": None, "forgetting_tolerance": 10.0},
    }


def _decision(stack, run_id: str) -> str:
    return stack.artifacts(run_id)["nightly-decision"][-1].data


def test_nightly_promotes_skips_unchanged_data_and_keeps_a_better_champion(stack):
    from r1lib.registry import Registry

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
    run3 = stack.run_deployment(
        "r1-nightly-retrain/nightly-retrain", _nightly_params(tmp, drop, max_steps=1, learning_rate=1e-7)
    )
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
