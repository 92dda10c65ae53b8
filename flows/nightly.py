"""The nightly retrain: fresh data in, a challenger trained, promoted only if it beats the champion.

    python -m flows.nightly --drop data/drop --registry registry            # one night, locally
    prefect deploy -n nightly-retrain                                       # scheduled at 02:00 (prefect.yaml)

1. Scan the drop location (a folder or any fsspec URL: ``s3://bucket/drop``, ``gcs://...``) for data files and
   fingerprint each by its bytes. Files some registered version was already trained on are not new; with nothing new
   the flow says so (a Markdown artifact) and stops.
2. Snapshot the new files into the registry (``data/<sha12>-<name>``): the training set is the base config's training
   files, plus every drop file accepted so far, plus the new ones. Validation (inside the finetune flow) quarantines
   bad rows as in any run.
3. Run the finetune flow as a subflow (all its stage caching applies: a retried nightly resumes where it failed).
4. Evaluate the champion's adapter on exactly the challenger's held-out set (same rows, same tokenization, same code:
   a cached stage, so the champion is re-scored only when something changed), compare on ``metric`` and check
   forgetting (replay perplexity ratio), and show the comparison as a table artifact.
5. Register the challenger and, if it won, promote it, inside one Prefect transaction whose last step smoke-tests the
   registered GGUF files; a failure anywhere rolls back the promotion (the previous champion is restored) and the
   registration (the entry and its files are removed). A failed smoke test never leaves a promoted model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.transactions import transaction
from pydantic import BaseModel

from flows.finetune import TINY, PresetConfig, finetune
from r1lib.compat import forget_sub_flow_results
from r1lib.config import PipelineConfig
from r1lib.errors import ConfigError
from r1lib.ops.gpu_slot import gpu_slot
from r1lib.ops.local_server import prefect_api
from r1lib.ops.recovery import close_out_orphans
from r1lib.ops.registry import Registry, VersionEntry, code_version
from r1lib.presets import expand_preset
from r1lib.process import apply_defaults
from r1lib.stages import Candidate, settings
from tasks.evaluate import evaluate_task
from tasks.promote import (
    PromotionPolicy,
    data_fingerprint,
    decide_task,
    promote_task,
    register_task,
    scan_drop_task,
    snapshot_task,
)
from tasks.smoke import smoke_task

DEFAULT_POLICY = PromotionPolicy()


class NightlyResult(BaseModel):
    """One night: nothing new, or a challenger registered and promoted or rejected, and why."""

    status: Literal["no-new-data", "promoted", "rejected"]
    data_fingerprint: str
    files: int  # data files in the drop location
    version: int | None = None  # the challenger's registry version
    champion: int | None = None  # the champion's version after the night
    reason: str | None = None
    challenger: dict[str, float | int | None] = {}
    champion_metrics: dict[str, float | int | None] | None = None


def nightly_name() -> str:
    params = flow_run.parameters
    return f"nightly {params.get('drop_url', '?')} -> {params.get('registry_dir', '?')}"


@flow(name="r1-nightly-retrain", flow_run_name=nightly_name, log_prints=True)
def nightly(
    drop_url: str = "data/drop",
    registry_dir: str = "registry",
    config: PresetConfig = TINY,
    policy: PromotionPolicy = DEFAULT_POLICY,
) -> NightlyResult:
    """Retrain on fresh data; promote the challenger only if it beats the champion without more forgetting."""
    apply_defaults()  # a worker-started run gets the command line's process defaults too
    close_out_orphans()  # what a killed earlier attempt left Running, and the GPU slot it held (r1lib/ops/recovery.py)
    registry = Registry(registry_dir)
    # registry.backend = mlflow: every change below is mirrored there, and the champion is read from its alias.
    registry.attach(config.registry.backend, config.registry.uri or config.tracking.uri, config.registry.model_name)
    files = scan_drop_task(drop_url)
    seen = registry.processed_files()
    new = [f for f in files if f.sha256 not in seen]
    fingerprint = data_fingerprint(files)
    if not new:
        message = (
            f"Nothing new in `{drop_url}`: {len(files)} data file(s), all already trained on "
            f"(data fingerprint `{fingerprint[:16]}`). No training, no promotion."
        )
        print(message)
        create_markdown_artifact(key="nightly-decision", markdown=f"## Nightly retrain\n\n{message}")
        return NightlyResult(status="no-new-data", data_fingerprint=fingerprint, files=len(files))
    print(f"{len(new)} new file(s) in {drop_url}: {[f.name for f in new]}")

    stored = snapshot_task(new, registry_dir)
    train_paths = [*config.data.train_paths, *registry.accepted_data(), *[s.snapshot for s in stored]]
    if any(not Path(p).exists() for p in train_paths):
        raise ConfigError(f"missing accepted data files: {[p for p in train_paths if not Path(p).exists()]}")
    challenger_cfg = config.model_copy(deep=True)
    challenger_cfg.data.train_paths = list(dict.fromkeys(train_paths))
    # The registry's snapshots of accepted drop files are data too: readable under the registry's data folder only.
    challenger_cfg.data.allowed_roots = [*challenger_cfg.data.allowed_roots, str(registry.root / "data")]
    if challenger_cfg.run_name is None:
        challenger_cfg.run_name = f"nightly-{challenger_cfg.fingerprint()[:10]}"

    run = finetune(challenger_cfg)
    forget_sub_flow_results()  # the tasks below take its fields: no flow_run inputs (the UI's Task Runs tab)
    challenger = {**run.evaluation.metrics(), **(run.fairness.metrics() if run.fairness else {})}

    # The champion, scored on exactly the same held-out rows by the same evaluation code.
    champion_entry = registry.champion()
    champion, champion_label = None, "no champion yet (vs base model)"
    if champion_entry is not None:
        version = champion_entry.version
        champion, champion_label = champion_entry.metrics, f"champion v{version} (metrics at its training)"
        adapter = champion_entry.adapter
        if adapter and Path(adapter).is_dir() and champion_entry.model_dir == run.model_dir:
            with gpu_slot():
                evaluation = evaluate_task.with_options(task_run_name=f"evaluate champion v{version}")(
                    Candidate(model_dir=run.model_dir, adapter_dir=adapter),
                    run.held_out,
                    **settings(challenger_cfg, "evaluate"),
                    out_dir=str(Path(registry_dir) / "eval" / f"v{version}"),
                )
            champion, champion_label = evaluation.metrics(), f"champion v{version} (re-evaluated on this held-out set)"
    held_out = run.data.deduped.held_out.label if run.data.deduped.held_out else challenger_cfg.data.test_path
    decision = decide_task(challenger, champion, champion_label, held_out, policy)

    entry = VersionEntry(
        data_fingerprint=fingerprint,
        drop_files=stored,
        train_paths=challenger_cfg.data.train_paths,
        config=challenger_cfg.model_dump(mode="json"),
        config_fingerprint=challenger_cfg.fingerprint(),
        code_version=code_version(),
        metrics=challenger,
        model_dir=run.model_dir,
        run_dir=run.run_dir,
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        decision=decision.reason,
        compared_with=champion_entry.version if champion_entry else None,
    )
    with transaction() as txn:
        txn.set("registry_dir", registry_dir)
        record = register_task(registry_dir, entry, run.trained.adapter, run.ggufs)
        txn.set("record", record)
        if decision.promote:
            txn.set("previous_champion", champion_entry.version if champion_entry else None)
            promote_task(registry_dir, record.version, decision.reason)
            # The registered copies themselves must load and answer: a failure here rolls back both steps above.
            smoke_task.with_options(task_run_name=f"verify-release v{record.version}", retries=1)(
                run.merged,
                [g.file() for g in record.ggufs],
                run.data.test.dataset,
                run.evaluation.decoding,
                challenger_cfg.smoke,
                str(Path(registry_dir) / "models" / f"v{record.version}"),
            )
        else:
            registry.set_status(record.version, "rejected", decision.reason)

    final = Registry(registry_dir).champion()
    champion_now = f"v{final.version}" if final else "none"
    outcome = "promoted" if decision.promote else "rejected"
    message = (
        f"## Nightly retrain: challenger v{record.version} {outcome}\n\n{decision.reason}\n\n"
        f"- data fingerprint `{fingerprint[:16]}`, new files: {', '.join(f.name for f in new)}\n"
        f"- champion now: {champion_now}\n- run: `{run.run_dir}`"
    )
    create_markdown_artifact(key="nightly-decision", markdown=message)
    print(message)
    return NightlyResult(
        status=outcome,
        data_fingerprint=fingerprint,
        files=len(files),
        version=record.version,
        champion=final.version if final else None,
        reason=decision.reason,
        challenger=challenger,
        champion_metrics=champion,
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.nightly", description=__doc__.split("\n")[0])
    parser.add_argument("--drop", default="data/drop")
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--config", help="JSON of PipelineConfig fields over the preset (default: tiny)")
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args(argv)
    config = PipelineConfig.model_validate(expand_preset(json.loads(args.config) if args.config else {}))
    with prefect_api():  # the configured server, else a local one that stops with the run and dies with it
        outcome = nightly(args.drop, args.registry, config, PromotionPolicy(metric=args.metric))
    print(outcome.model_dump_json(indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
