"""Stage 2, augment: prompt-template variation and general-data replay.

- Prompt-template variation: each training row gets ``prompt_variants`` extra copies whose last user turn is
  rewritten by a template from ``data/augment/prompt_templates.txt`` (the answer and reasoning are untouched, so
  they stay correct).
- Replay: general rows (``data.replay_path``) mixed in at ``replay_ratio`` of the training rows, a guard against
  forgetting. Every added row records its ``origin`` and its ``parent`` row id.
"""

from __future__ import annotations

import copy
import random
from collections import Counter
from pathlib import Path

from prefect import task
from pydantic import BaseModel

from tasks.config import AugmentConfig
from tasks.errors import ConfigError
from tasks.io import read_jsonl, write_jsonl
from tasks.orchestration import stage_options
from tasks.records import content_key

class AugmentedData(BaseModel):
    train: str
    rows_in: int
    rows_out: int
    origins: dict[str, int]


def load_templates(path: Path) -> list[str]:
    templates = [line.rstrip("\n") for line in path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and not line.startswith("#")]
    bad = [t for t in templates if t.count("{instruction}") != 1]
    if bad:
        raise ConfigError(f"{path}: each template needs exactly one {{instruction}} placeholder: {bad[:3]}")
    return templates


def vary_prompt(record: dict, template: str, origin: str) -> dict:
    twin = copy.deepcopy(record)
    last_user = next(m for m in reversed(twin["messages"]) if m["role"] == "user")
    last_user["content"] = template.replace("{instruction}", last_user["content"])
    twin.update(origin=origin, parent=record["id"])
    twin["id"] = content_key(twin)[:16]
    return twin


def augment(train: list[dict], replay: list[dict], cfg: AugmentConfig, templates: list[str]) -> list[dict]:
    rng = random.Random(cfg.seed)
    out = list(train)
    n_variants = min(cfg.prompt_variants, len(templates))
    for record in train:
        for k in rng.sample(range(len(templates)), n_variants):
            out.append(vary_prompt(record, templates[k], f"prompt_template:{k}"))
    n_replay = round(cfg.replay_ratio * len(train))
    if n_replay and replay:
        picks = rng.sample(replay, n_replay) if n_replay <= len(replay) else rng.choices(replay, k=n_replay)
        out.extend({**copy.deepcopy(r), "origin": "replay", "parent": r["id"]} for r in picks)
    rng.shuffle(out)
    return out


def augment_files(train_path: Path, replay_path: Path | None, cfg: AugmentConfig, out_dir: Path) -> AugmentedData:
    train = read_jsonl(train_path)
    replay = read_jsonl(replay_path) if replay_path else []
    rows = augment(train, replay, cfg, load_templates(Path(cfg.templates_path)))
    out = Path(out_dir) / "train.jsonl"
    write_jsonl(out, rows)
    origins = Counter(r["origin"].split(":")[0] for r in rows)
    return AugmentedData(train=str(out), rows_in=len(train), rows_out=len(rows), origins=dict(origins))


# --- Prefect ------------------------------------------------------------------------------------------------------


@task(name="augment", **stage_options())
def augment_task(train_path: str, replay_path: str | None, cfg: AugmentConfig, run_dir: str) -> AugmentedData:
    """Add prompt-template variants and general replay rows."""
    result = augment_files(Path(train_path), Path(replay_path) if replay_path else None, cfg, Path(run_dir) / "augment")
    print(f"augmented {result.rows_in} training rows into {result.rows_out}: {result.origins}")
    return result
