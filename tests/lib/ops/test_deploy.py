"""r1lib/ops/deploy.py without a server: what it would create from prefect.yaml, and how it refuses to go on.

Against a real server (pools, the limit, the deployments, swapping the nightly): tests/flows/test_server.py.
"""

from __future__ import annotations

import pytest
import yaml

from r1lib.config import PipelineConfig
from r1lib.ops.deploy import IMAGE_PROJECT_DIR, ROOT, DeployError, full_config, main, parse_args, plan
from r1lib.presets import preset


def _by_name(todo) -> dict:
    return {d["name"]: d for d in todo.deployments}


def test_default_deploy_is_the_local_flow_and_one_single_gpu_nightly_on_process_pools():
    todo = plan(parse_args([]))
    assert sorted(_by_name(todo)) == ["finetune-local", "nightly-retrain"]
    assert todo.removed == ["nightly-retrain-ddp"]  # never two nightlies at 02:00
    assert [(p.name, p.type, p.template) for p in todo.pools] == [
        ("local-process", "process", None),
        ("gpu", "process", None),
    ]
    assert (todo.limit, todo.limit_slots) == ("gpu", 1)
    nightly = _by_name(todo)["nightly-retrain"]
    # Where the worker runs the nightly, without R1_PROJECT_DIR: this checkout.
    assert nightly["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert nightly["schedules"][0]["cron"] == "0 2 * * *" and nightly["work_pool"]["name"] == "gpu"
    assert "pull" not in _by_name(todo)["finetune-local"]  # prefect deploy records this checkout itself


def test_ddp_nightly_on_a_docker_pool_runs_in_the_image():
    todo = plan(parse_args(["--nightly", "ddp", "--gpu-pool-type", "docker"]))
    assert sorted(_by_name(todo)) == ["finetune-local", "nightly-retrain-ddp"] and todo.removed == ["nightly-retrain"]
    gpu = next(p for p in todo.pools if p.name == "gpu")
    assert gpu.type == "docker" and gpu.template["job_configuration"]["container_create_kwargs"]["device_requests"]
    pull = _by_name(todo)["nightly-retrain-ddp"]["pull"]
    assert pull[0]["prefect.deployments.steps.set_working_directory"]["directory"] == IMAGE_PROJECT_DIR
    assert _by_name(todo)["nightly-retrain-ddp"]["parameters"]["config"]["train"]["launch"] == "ddp"


def test_no_nightly_removes_none():
    todo = plan(parse_args(["--nightly", "none"]))
    assert sorted(_by_name(todo)) == ["finetune-local"] and todo.removed == []
    assert [p.name for p in todo.pools] == ["local-process"]


def test_every_config_parameter_is_the_full_preset_with_the_yaml_overrides():
    """The UI form shows these values, and submits them: each must be what the preset plus prefect.yaml says."""
    todo = plan(parse_args(["--nightly", "single"]))
    local = _by_name(todo)["finetune-local"]["parameters"]["config"]
    expected = preset("tiny").model_dump(mode="json")
    expected["train"]["max_steps"] = 20
    expected["evaluate"].update(max_examples=20, max_new_tokens=32)
    assert local == expected
    nightly = _by_name(todo)["nightly-retrain"]["parameters"]["config"]
    assert nightly == preset("r1-qwen-1.5b").model_dump(mode="json")
    assert PipelineConfig.model_validate(nightly).model_dump(mode="json") == nightly  # a full config round-trips


def test_resolved_yaml_has_no_anchors_left_to_resolve_and_deploys_only_the_chosen():
    todo = plan(parse_args([]))
    text = yaml.safe_dump(todo.project_yaml, sort_keys=False)
    assert "definitions" not in todo.project_yaml and "{{" not in text
    assert [d["name"] for d in yaml.safe_load(text)["deployments"]] == ["finetune-local", "nightly-retrain"]


def test_full_config_refuses_a_bad_partial():
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        full_config({"preset": "tiny", "train": {"learning_rate": "fast"}})


def test_no_api_configured_is_a_clear_one_line_refusal(monkeypatch, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):
        assert main([]) == 1
    err = capsys.readouterr().err
    assert "no Prefect API configured" in err and "PREFECT_API_URL" in err


def test_a_missing_deployment_in_the_prefect_file_is_named(tmp_path):
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text(encoding="utf-8"))
    project["deployments"] = [d for d in project["deployments"] if d["name"] != "nightly-retrain-ddp"]
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(project), encoding="utf-8")
    try:
        plan(parse_args(["--prefect-file", str(path)]))
    except DeployError as exc:
        assert "nightly-retrain-ddp" in str(exc)
    else:
        raise AssertionError("a prefect.yaml without the ddp nightly was accepted")


def test_the_chosen_nightly_is_scheduled_active_though_prefect_yaml_pauses_the_other():
    on_disk = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    active = [n for n, d in on_disk.items() if any(s.get("active", True) for s in d.get("schedules") or [])]
    assert active == ["nightly-retrain"]  # prefect deploy --all schedules one nightly, not two
    todo = plan(parse_args(["--nightly", "ddp"]))
    assert [s["active"] for s in _by_name(todo)["nightly-retrain-ddp"]["schedules"]] == [True]


class FakePools:
    def __init__(self, kinds: dict[str, str]):
        self.kinds = kinds

    def read_work_pool(self, name):
        from types import SimpleNamespace

        return SimpleNamespace(type=self.kinds[name])


def test_an_existing_pool_of_another_type_is_refused_not_silently_kept():
    from r1lib.ops.deploy import Pool, ensure_pools

    with pytest.raises(DeployError, match="exists as a process pool, not docker: pass --gpu-pool-type process"):
        ensure_pools(FakePools({"gpu": "process"}), [Pool("gpu", "docker", None)])
    assert ensure_pools(FakePools({"gpu": "process"}), [Pool("gpu", "process", None)]) == [
        "work pool 'gpu' (process) exists"
    ]
