"""End to end against a real Prefect server: the README's deploy command, work pools, workers, retries, the nightly
flow, the run form, the artifacts and the UI in a headless browser.

The server, work pools and workers come from tests/server_stack.py (one stack for the session, shared with
test_server_crash.py, deployed by the README's command). Runs are kept small through run parameters. Marked
``server`` and ``slow``: ``scripts/test -m "not server"`` skips them. Screenshots of the UI go to
``$R1_SCREENSHOT_DIR`` (default ``.ci/artifacts/``, git-ignored); the UI test prints their paths.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import yaml
from server_stack import DEPLOY_COMMAND, ROOT, small_config, stage

from r1lib.stages import NAMES

pytestmark = [pytest.mark.server, pytest.mark.slow]

SCREENSHOTS = Path(os.environ.get("R1_SCREENSHOT_DIR") or ROOT / ".ci" / "artifacts")
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


def _deployments(stack) -> dict:
    from prefect.client.schemas.filters import DeploymentFilter

    with stack.client() as client:
        return {d.name: d for d in client.read_deployments(deployment_filter=DeploymentFilter())}


def _project_deployment(name: str) -> dict:
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    return next(d for d in project["deployments"] if d["name"] == name)


def _table(artifact) -> list[dict]:
    return artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)


def _missing_fields(model: type, value: dict, where: str = "config") -> list[str]:
    """Fields of the pydantic ``model`` (at any depth) that ``value`` leaves out: the run form fills those with the
    class defaults, whatever the preset says."""
    from pydantic import BaseModel

    missing = []
    for name, info in model.model_fields.items():
        if name not in value:
            missing.append(f"{where}.{name}")
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            missing += _missing_fields(info.annotation, value[name], f"{where}.{name}")
    return missing


def test_readme_deploy_command_from_a_fresh_prefect_home(stack):
    """The fixture ran the README's deploy command first thing, with a fresh PREFECT_HOME against an empty server;
    it made the pools, the GPU limit and one nightly. Run again with ``--nightly ddp`` it swaps the nightly."""
    assert " ".join(DEPLOY_COMMAND) in (ROOT / "README.md").read_text(encoding="utf-8")
    print(stack.deploy_output)
    with stack.client() as client:
        pools = {pool.name: pool.type for pool in client.read_work_pools()}
        limit = client.read_global_concurrency_limit_by_name("gpu")
    assert pools == {"local-process": "process", "gpu": "process"}
    assert limit.limit == 1
    deployments = _deployments(stack)
    assert set(deployments) == {"finetune-local", "nightly-retrain"}
    assert deployments["nightly-retrain"].work_pool_name == "gpu"
    # The nightly runs this checkout on a process pool, though R1_PROJECT_DIR was set nowhere.
    assert deployments["nightly-retrain"].pull_steps == [
        {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    ]

    try:
        output = stack.deploy("--nightly", "ddp")
        deployments = _deployments(stack)
        assert set(deployments) == {"finetune-local", "nightly-retrain-ddp"}, output
        schedules = [s for d in deployments.values() for s in d.schedules if s.active]
        assert [s.schedule.cron for s in schedules] == ["0 2 * * *"]  # one nightly at 02:00, not two
        assert deployments["nightly-retrain-ddp"].parameters["config"]["train"]["launch"] == "ddp"
    finally:
        stack.deploy()  # back to the single-GPU nightly, for the nightly test below
        stack.pause_schedules()
    assert set(_deployments(stack)) == {"finetune-local", "nightly-retrain"}


def test_run_forms_hold_every_field_at_the_presets_value(stack):
    """The UI's run form shows the deployment's parameters and fills every field they leave out with the class
    default (learning rate 2e-4 where the tiny preset says 1e-2): the deployments carry every field, at its value
    in the preset plus the overrides prefect.yaml gives."""
    from r1lib.config import PipelineConfig
    from r1lib.presets import expand_preset

    deployments = _deployments(stack)
    for name in ("finetune-local", "nightly-retrain"):
        config = deployments[name].parameters["config"]
        assert _missing_fields(PipelineConfig, config) == [], name
        partial = _project_deployment(name)["parameters"]["config"]
        expected = PipelineConfig.model_validate(expand_preset(partial)).model_dump(mode="json")
        assert config == expected, name
    tiny = deployments["finetune-local"].parameters["config"]
    assert (tiny["preset"], tiny["train"]["learning_rate"], tiny["train"]["micro_batch_size"]) == ("tiny", 1e-2, 16)


@pytest.fixture(scope="module")
def retried_run(crashed_run):
    """A finetune deployment run whose smoke-test stage fails (injected), then the same run retried: the third and
    fourth attempts of the session's crashed run (tests/conftest.py: crashed_run; its first two attempts were killed,
    tests/flows/test_server_crash.py checks those)."""
    return {
        "id": crashed_run["id"],
        "first": crashed_run["third"],
        "first_tasks": crashed_run["third_tasks"],
        "second": crashed_run["fourth"],
        "second_tasks": crashed_run["fourth_tasks"],
        "all_tasks": crashed_run["all_tasks"],
        "top_level": crashed_run["top_level"],
        "adapter": crashed_run["adapter"],
        "adapter_mtimes": crashed_run["adapter_mtimes"],
        "retry_seconds": crashed_run["retry3_seconds"],
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
    again = {stage(t.name): t.state.name for t in retried_run["second_tasks"]}
    print(f"retry took {retried_run['retry_seconds']:.1f} s; task runs of the retry: {again}")
    # Every stage that had finished came from the cache, not run again; the failed stage ran.
    assert {name: again.get(name) for name in finished} == {name: "Cached" for name in finished}
    assert again[stage(failed[0].name)] == "Completed"
    # ...and the trained adapter on disk was not rewritten.
    assert {p.name: p.stat().st_mtime_ns for p in retried_run["adapter"].iterdir()} == retried_run["adapter_mtimes"]


def test_run_graph_and_task_names_read_at_a_glance(retried_run):
    names = [t.name for t in retried_run["all_tasks"]]
    assert [n for n in names if re.search(r"-[0-9a-f]{3}$", n)] == [], "task runs named with Prefect's random suffix"
    # The shard maps live in the data stages' sub-flow: the run's own graph holds one node per pipeline stage.
    top = sorted({t.name for t in retried_run["top_level"]})
    assert not [n for n in top if n.startswith(("validate", "dedup", "augment", "debias", "tokenize"))], top
    assert len(top) <= 12, top


def test_deployment_run_shows_every_stage_artifact(stack, retried_run):
    artifacts = stack.artifacts(retried_run["id"])
    assert STAGE_ARTIFACTS <= set(artifacts), sorted(map(str, artifacts))
    summary = artifacts["run-summary"][-1].data
    assert "r1-finetune run summary" in summary and "| stage | result |" in summary and "| train |" in summary
    table = artifacts["evaluation"][-1].data
    assert "perplexity" in (table if isinstance(table, str) else json.dumps(table))
    progress = artifacts["training-progress"][-1]
    assert progress.data == 100 and "optimizer steps" in progress.description and "loss" in progress.description
    smoke = _table(artifacts["gguf-smoke-test"][-1])
    assert [row["GGUF"] for row in smoke] == ["F16", "Q8_0"] and all(len(row["answer"]) <= 40 for row in smoke)


def _task_runs_tabs(stack, page, flow_run_id: str, shot) -> dict[str, list[str]]:
    """Open the Task Runs tab of the flow run and of each of its sub-flow runs (the data stages) in the browser;
    {declared stage: the names of its task runs that the tab shows}."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from r1lib.stages import stage_of_task

    with stack.client() as client:
        ids, stand_ins = stack._family(client, flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    shown: dict[str, list[str]] = {name: [] for name in NAMES}
    for index, run_id in enumerate(ids):
        own = [t for t in tasks if t.flow_run_id == run_id and t.id not in stand_ins]
        if not own:
            continue
        page.goto(f"{stack.url}/runs/flow-run/{run_id}", wait_until="domcontentloaded", timeout=60_000)
        page.get_by_text("Task Runs", exact=True).filter(visible=True).first.click()
        page.get_by_text(own[0].name, exact=True).first.wait_for(timeout=90_000)
        page.wait_for_load_state("networkidle", timeout=90_000)
        for _ in range(5):  # the list loads more task runs as it is scrolled to its bottom
            page.mouse.wheel(0, 20_000)
            page.wait_for_timeout(500)
        text = page.inner_text("body")
        assert "No task runs" not in text, f"flow run {run_id}: the Task Runs tab is empty"
        shot(page, f"task-runs-{index}")
        for task in own:
            name = stage_of_task(task.task_key.rsplit("-", 1)[0])
            if name in shown and task.name in text:
                shown[name].append(task.name)
    return shown


def test_ui_shows_the_run_its_artifacts_and_a_run_form_that_submits_the_preset(stack, retried_run):
    """Headless Chromium: the run page, the Task Runs tabs (a task run of every stage, by name), its Artifacts tab,
    every artifact table within the page's width, the training progress line, and the deployment's run form, whose
    unchanged submission is the preset's config."""
    from r1lib.config import PipelineConfig
    from r1lib.presets import expand_preset

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian's chromium is not installed (scripts/test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    artifacts = {key: found[-1] for key, found in stack.artifacts(retried_run["id"]).items()}
    deployment = _deployments(stack)["finetune-local"]
    with stack.client() as client:
        run_name = client.read_flow_run(retried_run["id"]).name
    shots, submitted, console = [], [], []

    def shot(page, name: str) -> None:
        path = SCREENSHOTS / f"ui-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        shots.append(path)

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda message: console.append(message.text))
            page.goto(f"{stack.url}/runs/flow-run/{retried_run['id']}", wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text(run_name).first.wait_for(timeout=90_000)  # the flow run's page, by its readable name
            page.wait_for_load_state("networkidle", timeout=90_000)
            page.wait_for_timeout(5000)  # the run graph draws after its data came
            shot(page, "flow-run")
            shown = _task_runs_tabs(stack, page, retried_run["id"], shot)
            page.goto(f"{stack.url}/runs/flow-run/{retried_run['id']}", wait_until="domcontentloaded", timeout=60_000)
            page.get_by_text(run_name).first.wait_for(timeout=90_000)
            # The tab lists the task runs' artifacts below the flow run's in a virtual scroller, which draws a card only
            # once it is inside the viewport: a run title long enough to wrap pushed them below a 1,000 px one.
            page.set_viewport_size({"width": 1400, "height": 2400})
            page.get_by_text("Artifacts", exact=True).filter(visible=True).first.click()  # its Artifacts tab
            page.get_by_text("run-summary").first.wait_for(timeout=90_000)
            wanted, text, deadline = ("run-summary", "evaluation", "gguf-smoke-test"), "", time.monotonic() + 60
            while not all(key in text for key in wanted) and time.monotonic() < deadline:
                page.wait_for_timeout(500)
                text = page.inner_text("body")
            for key in wanted:
                assert key in text, f"{key} not on the flow run's Artifacts tab"
            shot(page, "flow-run-artifacts")
            page.set_viewport_size({"width": 1400, "height": 1000})

            # Every table (the table artifacts, and the Markdown ones that hold a table) fits the page: the UI never
            # wraps a cell, so a wider table is cut off behind a scroll bar.
            too_wide = {}
            for key, artifact in sorted((key, a) for key, a in artifacts.items() if key):  # not keyless ones
                if artifact.type != "table" and "|---" not in str(artifact.data):
                    continue
                page.goto(f"{stack.url}/artifacts/artifact/{artifact.id}", timeout=60_000)
                page.locator("table").first.wait_for(timeout=90_000)
                widths = page.evaluate(
                    "[...document.querySelectorAll('table')].map(t => [t.scrollWidth, t.parentElement.clientWidth])"
                )
                if key in ("gguf-smoke-test", "run-summary", "tokenization-audit-train"):
                    shot(page, key)
                if not widths or any(table > box + 1 for table, box in widths):
                    too_wide[key] = widths
            assert too_wide == {}, f"tables wider than the page (table, box px): {too_wide}"

            page.goto(f"{stack.url}/artifacts/artifact/{artifacts['training-progress'].id}", timeout=60_000)
            page.get_by_text("optimizer steps").first.wait_for(timeout=90_000)
            shot(page, "training-progress")

            def capture(route) -> None:  # what the form submits, kept from the server: nothing is run
                submitted.append(route.request.post_data_json)
                route.abort()

            page.route("**/create_flow_run", capture)
            page.goto(f"{stack.url}/deployments/deployment/{deployment.id}/run", timeout=60_000)
            learning_rate = page.get_by_text("Learning Rate").first
            learning_rate.wait_for(timeout=90_000)
            learning_rate.scroll_into_view_if_needed()  # the train section, whose values the issue was about
            shot(page, "run-form")
            page.get_by_role("button", name="Submit").click()
            deadline = time.monotonic() + 60
            while not submitted and time.monotonic() < deadline:
                page.wait_for_timeout(500)
        finally:
            browser.close()
            print("screenshots:\n" + "\n".join(f"  {path}" for path in shots))
    # The Task Runs tabs of the run and of its data sub-flow list a task run of every declared stage, by its name.
    assert [m for m in console if "Invalid TaskInputResponse" in m] == [], console
    missing = {name: ui for name, ui in shown.items() if not ui}
    assert missing == {}, f"stages whose task runs the Task Runs tabs do not show: {sorted(missing)}"
    assert set(shown) == set(NAMES)
    assert submitted, "the run form submitted nothing"
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    # The form sends a mapping with free keys (data.placeholders) as a JSON-kind value; the server hydrates the
    # parameters before the run starts (prefect/server/api/deployments.py), so compare what it hydrates to.
    config = hydrate(submitted[0]["parameters"], HydrationContext())["config"]
    assert config == deployment.parameters["config"]
    ran = PipelineConfig.model_validate(expand_preset(config)).model_dump(mode="json")
    assert ran == deployment.parameters["config"] and ran["train"]["learning_rate"] == 1e-2


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
    """On the gpu pool (a process pool here) deployed without R1_PROJECT_DIR anywhere."""
    from r1lib.ops.registry import Registry

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
    assert champion.version == 1 and champion.ggufs and Path(champion.ggufs[0].path).exists()
    assert champion.data_fingerprint and champion.code_version and champion.metrics["perplexity"] > 0
    finetune_runs = len(stack.flow_runs_of("r1-finetune"))

    # Night 2: the same data -> nothing to do, and nothing done.
    started = time.monotonic()
    run2 = stack.run_deployment("r1-nightly-retrain/nightly-retrain", _nightly_params(tmp, drop))
    state = stack.wait(run2)
    print(f"nightly on unchanged data: {time.monotonic() - started:.1f} s")
    assert state.state.type.value == "COMPLETED", state.state
    assert "Nothing new" in _decision(stack, run2)
    assert len(stack.flow_runs_of("r1-finetune")) == finetune_runs  # no training subflow
    assert [v.version for v in registry.versions()] == [1]

    # Night 3: new data, but a deliberately weak challenger (one step at a tiny learning rate) -> not promoted.
    (drop / "2026-11-28.jsonl").write_text("".join(rows[300:360]), encoding="utf-8")
    run3 = stack.run_deployment(
        "r1-nightly-retrain/nightly-retrain", _nightly_params(tmp, drop, max_steps=1, learning_rate=1e-7)
    )
    state = stack.wait(run3)
    assert state.state.type.value == "COMPLETED", state.state
    decision = _decision(stack, run3)
    assert "rejected" in decision, decision
    assert registry.champion().version == 1
    challenger = registry.get(2)
    assert challenger.status == "rejected" and not challenger.champion
    assert challenger.metrics["perplexity"] > champion.metrics["perplexity"]
    assert len(challenger.train_paths) == 3  # the base file + every accepted drop file
    table = stack.artifacts(run3)["champion-vs-challenger"][-1]
    assert "re-evaluated" in (table.description or "")
    rows = {row["metric"]: row["better"] for row in _table(table)}
    assert rows["replay_perplexity"] == "lower" and rows["forgetting_ratio"] == "lower"
