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
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.transactions import transaction
from pydantic import BaseModel, Field

from flows.finetune import PresetConfig, expand_preset, finetune
from r1lib.config import PipelineConfig, preset
from r1lib.errors import ConfigError
from r1lib.policy import gpu_slot, stage_options
from r1lib.registry import Registry, code_version

DATA_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
LOWER_IS_BETTER = {"perplexity"}


class DropFile(BaseModel):
    name: str
    url: str
    sha256: str
    bytes: int


class PromotionPolicy(BaseModel):
    metric: Literal["accuracy", "perplexity", "format_ok"] = Field(
        "accuracy", description="Compared on the fixed held-out set; perplexity: lower is better, others higher.")
    min_improvement: float = Field(0.0, ge=0, description="The challenger must beat the champion by more than this.")
    forgetting_tolerance: float = Field(
        0.05, ge=0, description="Refuse a challenger whose forgetting ratio exceeds the champion's by this share.")
    max_forgetting_ratio: float | None = Field(
        1.5, gt=0, description="Refuse a challenger whose replay perplexity grew by more than this factor (None: no "
                               "limit); the only forgetting check while there is no champion yet.")


# --- pure helpers -------------------------------------------------------------------------------------------------


def scan_drop(drop_url: str) -> list[DropFile]:
    """Every data file under the drop location (recursively), fingerprinted by content."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(drop_url)
    if not fs.exists(root):
        return []
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    files = []
    for path in sorted(fs.find(root)):
        name = path[len(root.rstrip("/")) + 1:] if path.startswith(root.rstrip("/") + "/") else Path(path).name
        if not path.lower().endswith(DATA_SUFFIXES) or any(part.startswith(".") for part in Path(name).parts):
            continue
        digest = hashlib.sha256()
        with fs.open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        url = path if protocol in ("file", "local") else f"{protocol}://{path}"
        files.append(DropFile(name=name, url=url, sha256=digest.hexdigest(), bytes=fs.size(path)))
    return files


def data_fingerprint(files: list[DropFile]) -> str:
    return hashlib.sha256("".join(f"{f.sha256}\n" for f in sorted(files, key=lambda f: f.sha256)).encode()).hexdigest()


def metrics_of(evaluate_summary: dict) -> dict:
    """The metrics the registry keeps, from a finetune summary's ``evaluate`` section."""
    return {"perplexity": evaluate_summary["perplexity_after"], "accuracy": evaluate_summary["accuracy_after"],
            "format_ok": evaluate_summary["format_ok_after"],
            "replay_perplexity": evaluate_summary["replay_perplexity_after"],
            "forgetting_ratio": evaluate_summary["forgetting_ratio"],
            "base_perplexity": evaluate_summary["perplexity_before"],
            "base_accuracy": evaluate_summary["accuracy_before"]}


def metrics_of_evaluation(evaluation: Any) -> dict:
    """The same metrics from an ``Evaluation`` (a stage result)."""
    return {"perplexity": evaluation.tuned.perplexity, "accuracy": evaluation.tuned.accuracy,
            "format_ok": evaluation.tuned.format_ok,
            "replay_perplexity": evaluation.tuned.replay_perplexity, "forgetting_ratio": evaluation.forgetting_ratio,
            "base_perplexity": evaluation.base.perplexity, "base_accuracy": evaluation.base.accuracy}


def decide(challenger: dict, champion: dict | None, policy: PromotionPolicy) -> tuple[bool, str]:
    """Promote? and why. Without a champion the challenger must beat the base model it was tuned from."""
    metric = policy.metric
    lower = metric in LOWER_IS_BETTER
    new = challenger.get(metric)
    if champion is not None:
        old, against, old_forgetting = champion.get(metric), "champion", champion.get("forgetting_ratio")
    else:
        old, against, old_forgetting = challenger.get(f"base_{metric}"), "base model", None
    if new is None:
        return False, f"challenger has no {metric}"
    if old is not None:
        gain = (old - new) if lower else (new - old)
        if gain <= policy.min_improvement:
            return False, (f"{metric} {new:.4g} vs {against} {old:.4g}: not better by more than "
                           f"{policy.min_improvement:g} ({'lower' if lower else 'higher'} is better)")
    forgetting = challenger.get("forgetting_ratio")
    if forgetting is not None:
        if policy.max_forgetting_ratio is not None and forgetting > policy.max_forgetting_ratio:
            return False, f"forgetting ratio {forgetting:.4g} above the limit {policy.max_forgetting_ratio:g}"
        if old_forgetting is not None and forgetting > old_forgetting * (1 + policy.forgetting_tolerance):
            return False, (f"forgetting regression: replay perplexity ratio {forgetting:.4g} vs {against} "
                           f"{old_forgetting:.4g} (tolerance {policy.forgetting_tolerance:.0%})")
    return True, (f"{metric} {new:.4g} beats {against} {old if old is None else format(old, '.4g')}; "
                  f"forgetting ratio {forgetting}")


# --- tasks --------------------------------------------------------------------------------------------------------


@task(name="scan-drop", task_run_name="scan-drop {drop_url}", cache_policy=NO_CACHE, retries=3,
      retry_delay_seconds=[5, 30, 120], retry_jitter_factor=0.5)
def scan_drop_task(drop_url: str) -> list[DropFile]:
    """List and fingerprint the data files in the drop location (never cached: its content is the question)."""
    return scan_drop(drop_url)


@task(name="snapshot-new-data", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 30, 120])
def snapshot_task(files: list[DropFile], registry_dir: str) -> list[dict]:
    """Copy each new drop file into the registry, verified by its sha256, so the drop may be cleaned later."""
    import fsspec

    from r1lib.io import atomic_path, sha256_file

    registry, stored = Registry(registry_dir), []
    for f in files:
        target = registry.snapshot_path(f.name, f.sha256)
        if not (target.exists() and sha256_file(target) == f.sha256):
            with atomic_path(target) as tmp, fsspec.open(f.url, "rb") as src, open(tmp, "wb") as dst:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    dst.write(chunk)
                dst.flush()
            if sha256_file(target) != f.sha256:
                raise OSError(f"{f.url} changed while it was copied (sha256 differs); the retry copies it again")
        stored.append({"name": f.name, "url": f.url, "sha256": f.sha256, "bytes": f.bytes, "snapshot": str(target)})
    return stored


@task(name="register-version", task_run_name="register challenger", cache_policy=NO_CACHE)
def register_task(registry_dir: str, entry: dict, adapter: str, ggufs: list[dict]) -> dict:
    record = Registry(registry_dir).add_version(entry, adapter, ggufs)
    print(f"registered v{record['version']} (data {entry['data_fingerprint'][:12]}, code {entry['code_version'][:12]})")
    return record


@register_task.on_rollback
def _unregister(txn) -> None:
    record = txn.get("record")
    Registry(txn.get("registry_dir")).remove_version(record["version"])
    print(f"rolled back: v{record['version']} removed from the registry")


@task(name="promote", task_run_name="promote v{version}", cache_policy=NO_CACHE)
def promote_task(registry_dir: str, version: int, decision: str) -> int | None:
    registry = Registry(registry_dir)
    previous = registry.set_champion(version)
    registry.set_status(version, "champion", decision)
    print(f"promoted v{version} to champion (previous: {previous})")
    return previous


@promote_task.on_rollback
def _demote(txn) -> None:
    registry = Registry(txn.get("registry_dir"))
    previous = txn.get("previous_champion")
    registry.set_champion(previous)
    print(f"rolled back: champion restored to {previous}")


@task(name="verify-release", task_run_name="verify-release v{version}", cache_policy=NO_CACHE, retries=1,
      retry_condition_fn=stage_options()["retry_condition_fn"])
def verify_release_task(version: int, merged_dir: str, ggufs: list[dict], smoke_cfg: Any, out_dir: str) -> None:
    """Smoke-test the registered GGUF files themselves (the copies that will serve): load, answer, parity with HF."""
    from tasks.export import GGUFFile
    from tasks.smoke import smoke_test

    files = [GGUFFile(**{k: g[k] for k in ("path", "type", "bytes", "tokenizer_pre") if k in g}) for g in ggufs]
    report = smoke_test(merged_dir, files, smoke_cfg, Path(out_dir))
    print(f"v{version}: {len(report.results)} registered GGUFs passed the smoke test")


# --- the flow -----------------------------------------------------------------------------------------------------


def nightly_name() -> str:
    params = flow_run.parameters
    return f"nightly {params.get('drop_url', '?')} -> {params.get('registry_dir', '?')}"


@flow(name="r1-nightly-retrain", flow_run_name=nightly_name, log_prints=True)
def nightly(drop_url: str = "data/drop", registry_dir: str = "registry",
            config: PresetConfig = preset("tiny"), policy: PromotionPolicy = PromotionPolicy()) -> dict:
    """Retrain on fresh data; promote the challenger only if it beats the champion without more forgetting."""
    registry = Registry(registry_dir)
    files = scan_drop_task(drop_url)
    seen = registry.processed_files()
    new = [f for f in files if f.sha256 not in seen]
    fingerprint = data_fingerprint(files)
    if not new:
        message = (f"Nothing new in `{drop_url}`: {len(files)} data file(s), all already trained on "
                   f"(data fingerprint `{fingerprint[:16]}`). No training, no promotion.")
        print(message)
        create_markdown_artifact(key="nightly-decision", markdown=f"## Nightly retrain\n\n{message}")
        return {"status": "no-new-data", "data_fingerprint": fingerprint, "files": len(files)}
    print(f"{len(new)} new file(s) in {drop_url}: {[f.name for f in new]}")

    stored = snapshot_task(new, registry_dir)
    train_paths = [*config.data.train_paths, *registry.accepted_data(), *[s["snapshot"] for s in stored]]
    if any(not Path(p).exists() for p in train_paths):
        raise ConfigError(f"missing accepted data files: {[p for p in train_paths if not Path(p).exists()]}")
    challenger_cfg = config.model_copy(deep=True)
    challenger_cfg.data.train_paths = list(dict.fromkeys(train_paths))
    # The registry's snapshots of accepted drop files are data too: readable under the registry's data folder only.
    challenger_cfg.data.allowed_roots = [*challenger_cfg.data.allowed_roots, str(registry.root / "data")]
    if challenger_cfg.run_name is None:
        challenger_cfg.run_name = f"nightly-{challenger_cfg.fingerprint()[:10]}"

    summary = finetune(challenger_cfg)
    challenger = metrics_of(summary["evaluate"])

    # The champion, scored on exactly the same held-out rows by the same evaluation code.
    champion_entry = registry.champion()
    champion, champion_source = None, None
    if champion_entry is not None:
        champion = champion_entry.get("metrics")
        champion_source = "registry (recorded at its training)"
        same_base = champion_entry.get("model_dir") == summary["eval_inputs"]["model_dir"]
        if champion_entry.get("adapter") and Path(champion_entry["adapter"]).is_dir() and same_base:
            from tasks.evaluate import evaluate_task

            inputs = summary["eval_inputs"]
            with gpu_slot():
                evaluation = evaluate_task.with_options(task_run_name=f"evaluate champion v{champion_entry['version']}")(
                    inputs["model_dir"], champion_entry["adapter"], inputs["test_records"], inputs["test_dataset"],
                    inputs["replay_dataset"], challenger_cfg.model, challenger_cfg.evaluate, challenger_cfg.tokenize,
                    str(Path(registry_dir) / "eval" / f"v{champion_entry['version']}"))
            champion = metrics_of_evaluation(evaluation)
            champion_source = "re-evaluated on this held-out set"
    promote, reason = decide(challenger, champion, policy)

    rows = [{"metric": m, "challenger": challenger.get(m),
             "champion": None if champion is None else champion.get(m),
             "base model": challenger.get(f"base_{m}") if m in ("perplexity", "accuracy") else None,
             "better": ("lower" if m in LOWER_IS_BETTER or m == "forgetting_ratio" else "higher")}
            for m in ("perplexity", "accuracy", "format_ok", "replay_perplexity", "forgetting_ratio")]
    create_table_artifact(
        key="champion-vs-challenger", table=rows,
        description=(f"Champion {'v' + str(champion_entry['version']) if champion_entry else '(none: vs base model)'}"
                     f" ({champion_source or 'n/a'}) vs challenger on `{challenger_cfg.data.test_path}`; metric "
                     f"**{policy.metric}**. Decision: **{'PROMOTE' if promote else 'keep champion'}**: {reason}"))

    entry = {"data_fingerprint": fingerprint, "drop_files": stored, "train_paths": challenger_cfg.data.train_paths,
             "config": challenger_cfg.model_dump(mode="json"), "config_fingerprint": challenger_cfg.fingerprint(),
             "code_version": code_version(), "metrics": challenger, "model_dir": summary["eval_inputs"]["model_dir"],
             "run_dir": summary["run_dir"], "flow_run_id": str(flow_run.id) if flow_run.id else None,
             "decision": reason, "compared_with": champion_entry["version"] if champion_entry else None}
    ggufs = [{"path": g["path"], "type": g["type"], "bytes": Path(g["path"]).stat().st_size} for g in summary["gguf"]]

    with transaction() as txn:
        txn.set("registry_dir", registry_dir)
        record = register_task(registry_dir, entry, summary["train"]["adapter"], ggufs)
        txn.set("record", record)
        if promote:
            txn.set("previous_champion", champion_entry["version"] if champion_entry else None)
            promote_task(registry_dir, record["version"], reason)
            verify_release_task(record["version"], summary["eval_inputs"]["merged"], record["ggufs"],
                                challenger_cfg.smoke, str(Path(registry_dir) / "models" / f"v{record['version']}"
                                                          / "smoke"))
        else:
            registry.set_status(record["version"], "rejected", reason)

    final = Registry(registry_dir).champion()
    outcome = "promoted" if promote else "rejected"
    message = (f"## Nightly retrain: challenger v{record['version']} {outcome}\n\n{reason}\n\n"
               f"- data fingerprint `{fingerprint[:16]}`, new files: {', '.join(f.name for f in new)}\n"
               f"- champion now: v{final['version'] if final else None}\n- run: `{summary['run_dir']}`")
    create_markdown_artifact(key="nightly-decision", markdown=message)
    print(message)
    return {"status": outcome, "version": record["version"], "champion": final["version"] if final else None,
            "reason": reason, "data_fingerprint": fingerprint, "challenger": challenger, "champion_metrics": champion}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.nightly", description=__doc__.split("\n")[0])
    parser.add_argument("--drop", default="data/drop")
    parser.add_argument("--registry", default="registry")
    parser.add_argument("--config", help="JSON of PipelineConfig fields over the preset (default: tiny)")
    parser.add_argument("--metric", default="accuracy")
    args = parser.parse_args(argv)
    config = PipelineConfig.model_validate(expand_preset(json.loads(args.config) if args.config else {}))
    print(json.dumps(nightly(args.drop, args.registry, config, PromotionPolicy(metric=args.metric)), indent=2,
                     default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
