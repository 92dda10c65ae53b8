"""The nightly retrain's stages around the finetune flow: find fresh data, snapshot it, compare the challenger with
the champion, register it, promote it.

Promotion and registration run inside one Prefect transaction (flows/nightly.py): their rollback hooks here undo them
(the previous champion is restored, the new entry and its files removed) when a later step of it fails.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Annotated, Literal

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from r1lib.config import FORGETTING_LIMIT
from r1lib.data.inputs import SUFFIXES
from r1lib.errors import ConfigError
from r1lib.export.gguf import GGUFFile
from r1lib.io import atomic_path, sha256_file
from r1lib.ops.registry import DropSnapshot, Registry, Version, VersionEntry

LOWER_IS_BETTER = {"perplexity", "replay_perplexity", "forgetting_ratio"}
LM_EVAL_METRIC = r"^lm_eval/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+,[A-Za-z0-9_.-]+$"
COMPARED = ("perplexity", "accuracy", "format_ok", "replay_perplexity", "forgetting_ratio", "fairness_agreement")


class DropFile(BaseModel):
    name: str
    url: str
    sha256: str
    bytes: int


class PromotionPolicy(BaseModel):
    metric: (
        Literal["accuracy", "perplexity", "format_ok", "preference_accuracy"]
        | Annotated[str, Field(pattern=LM_EVAL_METRIC)]
    ) = Field(
        "accuracy",
        description="Compared on the fixed held-out set; perplexity: lower is better, others higher. "
        "preference_accuracy: held-out preference pairs (a dpo/orpo/kto run). "
        "lm_eval/<task>/<metric>,<filter> (e.g. lm_eval/r1_sample_topic/exact_match,none): an evaluate.lm_eval_tasks "
        "score, think block stripped, higher is better.",
    )
    min_improvement: float = Field(0.0, ge=0, description="The challenger must beat the champion by more than this.")
    forgetting_tolerance: float = Field(
        0.05, ge=0, description="Refuse a challenger whose forgetting ratio exceeds the champion's by this share."
    )
    max_forgetting_ratio: float | None = Field(
        FORGETTING_LIMIT,
        gt=0,
        description="Refuse a challenger whose replay perplexity grew by more than this factor (None: no "
        "limit); the only forgetting check while there is no champion yet.",
    )
    max_fairness_drop: float | None = Field(
        0.1,
        ge=0,
        le=1,
        description="Refuse a challenger whose counterfactual agreement (tasks/fairness.py) is lower than the base "
        "model's, or the champion's, by more than this (None: not checked).",
    )
    min_fairness_prompts: int = Field(
        20,
        ge=1,
        description="Judge counterfactual agreement only when at least this many twin prompts were scored: with "
        "fewer, one changed answer moves agreement by more than max_fairness_drop.",
    )


class Decision(BaseModel):
    promote: bool
    reason: str


def scan_drop(drop_url: str) -> list[DropFile]:
    """Every data file under the drop location (recursively), fingerprinted by content. A location that does not
    exist is a ConfigError: a mistyped ``drop_url`` would otherwise make every nightly a silent no-op."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(drop_url)
    if not fs.exists(root):
        raise ConfigError(
            f"drop_url {drop_url!r} does not exist: create it (the nightly trains on what appears there) or fix the "
            "deployment's drop_url parameter"
        )
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    files = []
    for path in sorted(fs.find(root)):
        name = path[len(root.rstrip("/")) + 1 :] if path.startswith(root.rstrip("/") + "/") else Path(path).name
        if not path.lower().endswith(SUFFIXES) or any(part.startswith(".") for part in Path(name).parts):
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


def decide(challenger: dict, champion: dict | None, policy: PromotionPolicy) -> tuple[bool, str]:
    """Promote? and why. Without a champion, or with one that has no figure for the metric (its metrics recorded
    before the metric was chosen, its adapter gone), the challenger must beat the base model it was tuned from."""
    metric = policy.metric
    lower = metric in LOWER_IS_BETTER
    new = challenger.get(metric)
    if champion is not None:
        old, against, old_forgetting = champion.get(metric), "champion", champion.get("forgetting_ratio")
    else:
        old, against, old_forgetting = challenger.get(f"base_{metric}"), "base model", None
    beaten = against  # what the metric is compared with
    if old is None and champion is not None:
        old, beaten = challenger.get(f"base_{metric}"), f"base model (the champion has no {metric})"
    if new is None:
        return False, f"challenger has no {metric}"
    if (refusal := not_a_number(challenger, champion, policy)) is not None:
        return False, refusal
    if old is not None:
        gain = (old - new) if lower else (new - old)
        if gain <= policy.min_improvement:
            return False, (
                f"{metric} {new:.4g} vs {beaten} {old:.4g}: not better by more than "
                f"{policy.min_improvement:g} ({'lower' if lower else 'higher'} is better)"
            )
    forgetting = challenger.get("forgetting_ratio")
    if forgetting is not None:
        if policy.max_forgetting_ratio is not None and forgetting > policy.max_forgetting_ratio:
            return False, f"forgetting ratio {forgetting:.4g} above the limit {policy.max_forgetting_ratio:g}"
        if old_forgetting is not None and forgetting > old_forgetting * (1 + policy.forgetting_tolerance):
            return False, (
                f"forgetting regression: replay perplexity ratio {forgetting:.4g} vs {against} "
                f"{old_forgetting:.4g} (tolerance {policy.forgetting_tolerance:.0%})"
            )
    if (refusal := fairness_refusal(challenger, champion, against, policy)) is not None:
        return False, refusal
    return True, (
        f"{metric} {new:.4g} beats {beaten} {old if old is None else format(old, '.4g')}; "
        f"forgetting ratio {forgetting}; counterfactual agreement {challenger.get('fairness_agreement')}"
    )


def not_a_number(challenger: dict, champion: dict | None, policy: PromotionPolicy) -> str | None:
    """Why a figure the decision compares is present but not a finite number (a diverged evaluation, a hand-edited
    registry index), or None: every comparison with NaN is false, so it would pass each check unseen."""
    compared = [policy.metric, "forgetting_ratio"]
    if policy.max_fairness_drop is not None:
        compared.append("fairness_agreement")
    figures = [(f"challenger's {name}", challenger.get(name)) for name in compared]
    if champion is None or champion.get(policy.metric) is None:
        figures.append((f"base model's {policy.metric}", challenger.get(f"base_{policy.metric}")))
    if champion is not None:
        figures += [(f"champion's {name}", champion.get(name)) for name in compared]
    if policy.max_fairness_drop is not None:
        figures.append(("base model's fairness_agreement", challenger.get("base_fairness_agreement")))
    for label, value in figures:
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)):
            return f"{label} is {value!r}, not a finite number: it cannot be compared"
    return None


def fairness_refusal(challenger: dict, champion: dict | None, against: str, policy: PromotionPolicy) -> str | None:
    """Why the challenger's counterfactual agreement rules it out (it dropped past ``max_fairness_drop`` below the
    base model's or the champion's), or None."""
    agreement = challenger.get("fairness_agreement")
    if agreement is None or policy.max_fairness_drop is None:
        return None
    scored = challenger.get("fairness_prompts")
    if scored is not None and scored < policy.min_fairness_prompts:
        return None  # too few twins to tell a drop from noise; the card still shows both agreements
    references = [("base model", challenger.get("base_fairness_agreement"))]
    if champion is not None:
        references.append((against, champion.get("fairness_agreement")))
    for label, reference in references:
        if reference is not None and agreement < reference - policy.max_fairness_drop:
            return (
                f"counterfactual agreement {agreement:.2f} vs {label} {reference:.2f}: dropped by more than "
                f"max_fairness_drop {policy.max_fairness_drop:g}"
            )
    return None


def comparison_rows(challenger: dict, champion: dict | None) -> list[dict]:
    """Challenger, champion and base model side by side, with which direction is better for each metric (the
    lm_eval task scores, think block stripped, after the held-out metrics)."""
    with_base = ("perplexity", "accuracy", "fairness_agreement")
    lm_eval = sorted(k for k in challenger if k.startswith("lm_eval/"))
    return [
        {
            "metric": m,
            "challenger": challenger.get(m),
            "champion": None if champion is None else champion.get(m),
            "base model": challenger.get(f"base_{m}") if m in with_base or m in lm_eval else None,
            "better": "lower" if m in LOWER_IS_BETTER else "higher",
        }
        for m in (*COMPARED, *lm_eval)
    ]


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(
    name="scan-drop",
    task_run_name="scan-drop {drop_url}",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 30, 120],
    retry_jitter_factor=0.5,
)
def scan_drop_task(drop_url: str) -> list[DropFile]:
    """List and fingerprint the data files in the drop location (never cached: its content is the question)."""
    return scan_drop(drop_url)


@task(
    name="snapshot-new-data",
    task_run_name="snapshot new data",
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=[5, 30, 120],
)
def snapshot_task(files: list[DropFile], registry_dir: str) -> list[DropSnapshot]:
    """Copy each new drop file into the registry, verified by its sha256, so the drop may be cleaned later."""
    import fsspec

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
        stored.append(DropSnapshot(name=f.name, url=f.url, sha256=f.sha256, bytes=f.bytes, snapshot=str(target)))
    return stored


@task(name="register-version", task_run_name="register challenger", cache_policy=NO_CACHE)
def register_task(registry_dir: str, entry: VersionEntry, adapter: str, ggufs: list[GGUFFile]) -> Version:
    """Register a trained adapter and its GGUF files as a new candidate version."""
    record = Registry(registry_dir).add_version(entry, adapter, ggufs)
    print(f"registered v{record.version} (data {entry.data_fingerprint[:12]}, code {entry.code_version[:12]})")
    return record


@register_task.on_rollback
def _unregister(txn) -> None:
    record = txn.get("record")
    Registry(txn.get("registry_dir")).remove_version(record.version)
    print(f"rolled back: v{record.version} removed from the registry")


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


@task(name="decide-promotion", task_run_name="champion vs challenger", cache_policy=NO_CACHE)
def decide_task(
    challenger: dict, champion: dict | None, champion_label: str, test_path: str, policy: PromotionPolicy
) -> Decision:
    """Promote? and why, with the comparison as a table artifact."""
    promote, reason = decide(challenger, champion, policy)
    create_table_artifact(
        key="champion-vs-challenger",
        table=comparison_rows(challenger, champion),
        description=(
            f"{champion_label} vs challenger on `{test_path}`; metric **{policy.metric}**. Decision: "
            f"**{'PROMOTE' if promote else 'keep champion'}**: {reason}"
        ),
    )
    return Decision(promote=promote, reason=reason)
