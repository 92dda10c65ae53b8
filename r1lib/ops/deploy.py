"""Deploy r1-finetune to a Prefect server in one command: work pools, the GPU concurrency limit, the deployments.

    python -m r1lib.ops.deploy                          # pools local-process + gpu (process), limit `gpu` (1 slot),
                                                    # deployments finetune-local + nightly-retrain (one GPU)
    python -m r1lib.ops.deploy --nightly ddp            # the data-parallel nightly instead (nightly-retrain-ddp)
    python -m r1lib.ops.deploy --gpu-pool-type docker   # the gpu pool from deployments/docker-gpu.json
    python -m r1lib.ops.deploy --nightly none           # no nightly deployment

The deployments are the ones in prefect.yaml, deployed by ``prefect deploy`` with three things resolved here:

- every ``config`` parameter is expanded over its preset (``r1lib.presets.expand_preset``), so the UI's run form
  shows every field with the value that runs, and submitting it unchanged runs the preset (a partial config would
  show the class defaults for the fields it leaves out, and submit them);
- exactly one nightly deployment: the one chosen is deployed, the other deleted from the server if it is there
  (both would train at 02:00 on the same pool);
- the nightly's working directory on the worker: this checkout for a ``process`` pool, ``--project-dir`` (default
  the image's ``/opt/r1-finetune``) for a ``docker`` or ``kubernetes`` pool.

What already exists is kept: a pool is never replaced (one of another type than asked is refused), the limit's
size is not changed. Running it again redeploys and changes nothing else. It needs a reachable Prefect API
(``PREFECT_API_URL``, or a profile that sets it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from r1lib.config import PipelineConfig
from r1lib.ops.gpu_slot import gpu_limit_name
from r1lib.paths import PROJECT_DIR
from r1lib.presets import expand_preset

ROOT = PROJECT_DIR
PREFECT_YAML = ROOT / "prefect.yaml"
NIGHTLIES = {"single": "nightly-retrain", "ddp": "nightly-retrain-ddp"}
POOL_TEMPLATES = {
    "docker": ROOT / "deployments/docker-gpu.json",
    "kubernetes": ROOT / "deployments/kubernetes-gpu.json",
}
IMAGE_PROJECT_DIR = "/opt/r1-finetune"  # where deployments/README.md's image holds the project


class DeployError(Exception):
    """A deploy that cannot go on; the message says what to do."""


@dataclass
class Pool:
    name: str
    type: str
    template: dict | None = None  # None: the type's default base job template


@dataclass
class Plan:
    """What one deploy creates: pools, the limit, and the deployments as ``prefect deploy`` reads them."""

    pools: list[Pool]
    limit: str
    limit_slots: int
    deployments: list[dict]
    removed: list[str] = field(default_factory=list)  # deployments of prefect.yaml the server must not keep
    project_yaml: dict = field(default_factory=dict)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m r1lib.ops.deploy", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--nightly",
        choices=[*NIGHTLIES, "none"],
        default="single",
        help="which nightly retrain to schedule: single (one GPU), ddp (every GPU of the worker's machine), none",
    )
    parser.add_argument(
        "--gpu-pool-type",
        choices=["process", "docker", "kubernetes"],
        default="process",
        help="type of the `gpu` work pool when it does not exist yet (docker/kubernetes: the job templates in "
        "deployments/; their workers need prefect-docker / prefect-kubernetes)",
    )
    parser.add_argument("--gpu-pool-template", type=Path, help="a base job template (JSON) for the gpu pool instead")
    parser.add_argument("--gpu-slots", type=int, default=1, help="size of the GPU limit when it is created (default 1)")
    parser.add_argument(
        "--project-dir",
        help="the project's folder where the nightly runs (default: this checkout for a process pool, "
        f"{IMAGE_PROJECT_DIR} in the image for docker/kubernetes)",
    )
    parser.add_argument(
        "--prefect-file", type=Path, default=PREFECT_YAML, help="the deployments (default prefect.yaml)"
    )
    args = parser.parse_args(argv)
    if args.gpu_slots < 1:
        parser.error("--gpu-slots must be at least 1")
    return args


def full_config(partial: dict | None) -> dict:
    """A deployment's ``config`` parameter with every field: its preset under the fields it sets, validated."""
    return PipelineConfig.model_validate(expand_preset(dict(partial or {}))).model_dump(mode="json")


def gpu_pool_template(args: argparse.Namespace) -> dict | None:
    path = args.gpu_pool_template or POOL_TEMPLATES.get(args.gpu_pool_type)
    if path is None:
        return None
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DeployError(f"gpu pool template {path}: {exc}") from None


def plan(args: argparse.Namespace) -> Plan:
    """Read prefect.yaml and decide what to create; talks to no server."""
    try:
        project = yaml.safe_load(args.prefect_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise DeployError(f"{args.prefect_file}: {exc}") from None
    by_name = {d["name"]: d for d in project.get("deployments") or []}
    missing = [name for name in ("finetune-local", *NIGHTLIES.values()) if name not in by_name]
    if missing:
        raise DeployError(f"{args.prefect_file} has no deployment named {', '.join(missing)}")
    chosen = ["finetune-local"] + ([NIGHTLIES[args.nightly]] if args.nightly in NIGHTLIES else [])
    project_dir = args.project_dir or (str(ROOT) if args.gpu_pool_type == "process" else IMAGE_PROJECT_DIR)

    deployments, pool_types = [], {}
    for name in chosen:
        deployment = deepcopy(by_name[name])
        parameters = deployment.setdefault("parameters", {})
        parameters["config"] = full_config(parameters.get("config"))
        pool = deployment["work_pool"]["name"]
        pool_types[pool] = args.gpu_pool_type if pool == "gpu" else "process"
        if name in NIGHTLIES.values():
            # prefect.yaml keeps the second nightly paused; the one chosen here runs.
            deployment["schedules"] = [{**schedule, "active": True} for schedule in deployment.get("schedules") or []]
        if pool == "gpu":
            # Where the worker runs the nightly: without this step, a process worker would stay in its own folder.
            deployment["pull"] = [
                {"prefect.deployments.steps.set_working_directory": {"directory": project_dir}},
            ]
        deployments.append(deployment)
    pools = [Pool(name, kind, gpu_pool_template(args) if name == "gpu" else None) for name, kind in pool_types.items()]
    removed = [n for n in NIGHTLIES.values() if n not in chosen] if args.nightly in NIGHTLIES else []
    resolved = {k: v for k, v in project.items() if k not in ("deployments", "definitions")}
    resolved["deployments"] = deployments
    return Plan(pools, gpu_limit_name(), args.gpu_slots, deployments, removed, resolved)


def default_template(kind: str) -> dict:
    if kind != "process":
        raise DeployError(f"no base job template for a {kind} pool: pass --gpu-pool-template")
    from prefect.workers.process import ProcessWorker

    return ProcessWorker.get_default_base_job_template()


def ensure_pools(client, pools: list[Pool]) -> list[str]:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    said = []
    for pool in pools:
        try:
            existing = client.read_work_pool(pool.name)
        except ObjectNotFound:
            template = pool.template if pool.template is not None else default_template(pool.type)
            client.create_work_pool(WorkPoolCreate(name=pool.name, type=pool.type, base_job_template=template))
            said.append(f"work pool {pool.name!r} ({pool.type}) created")
            continue
        if existing.type != pool.type:
            # The deployment's working directory follows the pool type asked for: a mismatch would strand it.
            raise DeployError(
                f"work pool {pool.name!r} exists as a {existing.type} pool, not {pool.type}: pass "
                f"--gpu-pool-type {existing.type}, or delete it first (prefect work-pool delete {pool.name})"
            )
        said.append(f"work pool {pool.name!r} ({existing.type}) exists")
    return said


def ensure_limit(client, name: str, slots: int) -> str:
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    if not name:
        return "no GPU limit (R1_GPU_LIMIT is empty)"
    try:
        limit = client.read_global_concurrency_limit_by_name(name)
        return f"concurrency limit {name!r} exists ({limit.limit} slot(s))"
    except ObjectNotFound:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
        return f"concurrency limit {name!r} created ({slots} slot(s)): one training per GPU"


def run_prefect_deploy(project: dict) -> None:
    """``prefect deploy --all`` over the resolved deployments, from the project root (entrypoints are relative)."""
    prefect = str(Path(sys.executable).with_name("prefect"))
    with tempfile.TemporaryDirectory(prefix="r1-deploy-") as tmp:
        resolved = Path(tmp) / "prefect.yaml"
        resolved.write_text(yaml.safe_dump(project, sort_keys=False, allow_unicode=True), encoding="utf-8")
        proc = subprocess.run(
            [prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(resolved)],
            cwd=ROOT,
            env={**os.environ, "PREFECT_CLI_PROMPT": "false"},
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise DeployError(
            f"prefect deploy failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )


def remove_deployments(client, flow_names: dict[str, str], names: list[str]) -> list[str]:
    from prefect.exceptions import ObjectNotFound

    said = []
    for name in names:
        try:
            deployment = client.read_deployment_by_name(f"{flow_names[name]}/{name}")
        except ObjectNotFound:
            continue
        client.delete_deployment(deployment.id)
        said.append(f"deployment {flow_names[name]}/{name} deleted (one nightly at a time)")
    return said


def check_api() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise DeployError(
            "no Prefect API configured: start one (prefect server start) and set PREFECT_API_URL, e.g. "
            "export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    return url


FLOW_NAMES = {"finetune-local": "r1-finetune", **{n: "r1-nightly-retrain" for n in NIGHTLIES.values()}}


def deploy(args: argparse.Namespace) -> list[str]:
    """Create what is missing and deploy; returns what was done, one line each."""
    from prefect.client.orchestration import get_client

    todo = plan(args)
    url = check_api()
    try:
        with get_client(sync_client=True) as client:
            client.api_healthcheck()
            said = ensure_pools(client, todo.pools)
            said.append(ensure_limit(client, todo.limit, todo.limit_slots))
    except DeployError:
        raise
    except Exception as exc:  # noqa: BLE001 (connection refused, HTTP errors: all mean the same to the user)
        raise DeployError(f"the Prefect API at {url} did not answer ({type(exc).__name__}: {exc})") from None
    run_prefect_deploy(todo.project_yaml)
    with get_client(sync_client=True) as client:
        said += remove_deployments(client, FLOW_NAMES, todo.removed)
    for d in todo.deployments:
        said.append(f"deployment {FLOW_NAMES[d['name']]}/{d['name']} on pool {d['work_pool']['name']!r}")
    return said


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        for line in deploy(args):
            print(line)
    except DeployError as exc:
        print(f"deploy failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
