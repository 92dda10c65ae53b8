"""What the replay mix does for the tiny preset: train and evaluate with and without it, side by side.

    python bench/tiny_replay.py                                   # the tiny preset vs the same with replay off
    python bench/tiny_replay.py --set train.max_steps=30 --variant lr3e-3:train.learning_rate=0.003

Each variant runs the flow's data stages, the train stage and the evaluate stage (the same functions the flow calls)
on the tiny preset plus its ``--set`` overrides, in a run folder of its own under ``runs/``. It prints held-out
accuracy, the forgetting ratio (replay perplexity after / before) and training time per variant, and writes JSON and
a dated Markdown table into bench/results/. Export and smoke test are left out: they do not change these figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

RESULTS = ROOT / "bench" / "results"


def run_variant(name: str, sets: list[str]) -> dict:
    from prefect import flow

    from flows.data import run_data_stages
    from r1lib.presets import config_from_args
    from r1lib.stages import Candidate
    from tasks.evaluate import evaluate
    from tasks.resolve_model import resolve_model_task
    from tasks.train import train

    config = config_from_args(["--preset", "tiny", *[arg for s in sets for arg in ("--set", s)]])
    run = str(config.run_dir())

    @flow(name="bench-tiny-replay-data")
    def data_only():
        model = resolve_model_task(config.model, config.cache_dir, config.train.lora.target_modules)
        return model, run_data_stages(config, model, run)

    model, data = data_only()
    started = time.monotonic()
    trained = train(
        data.train.dataset,
        data.test.dataset,
        model,
        config.model,
        config.train,
        config.tokenize,
        Path(run) / "train",
    )
    train_s = time.monotonic() - started
    started = time.monotonic()
    evaluation = evaluate(
        Candidate(model_dir=model, adapter_dir=trained.adapter),
        data.held_out(),
        config.model,
        config.evaluate,
        config.tokenize,
        Path(run) / "evaluate",
    )
    return {
        "variant": name,
        "set": sets,
        "run_dir": run,
        "replay_rows": data.augmented.summary().get("augment", {}).get("origins", {}).get("replay"),
        "steps": trained.steps,
        "first_loss": trained.first_loss,
        "last_loss": trained.last_loss,
        "train_seconds": round(train_s, 1),
        "evaluate_seconds": round(time.monotonic() - started, 1),
        "accuracy_before": evaluation.base.accuracy,
        "accuracy_after": evaluation.tuned.accuracy,
        "replay_perplexity_before": evaluation.base.replay_perplexity,
        "replay_perplexity_after": evaluation.tuned.replay_perplexity,
        "forgetting_ratio": evaluation.forgetting_ratio,
        "forgetting_limit": evaluation.forgetting_limit,
        "load_average": os.getloadavg()[0],
    }


def main() -> int:
    from r1lib.process import apply_defaults

    apply_defaults()  # as the r1-finetune command: before torch loads
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="a field for every variant (KEY=VALUE)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE[,KEY=VALUE]; default: 'preset' (no change) and 'no-replay' (augment.replay_ratio=0)",
    )
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()
    variants = [v.partition(":") for v in args.variant] or [
        ("preset", ":", ""),
        ("no-replay", ":", "augment.replay_ratio=0"),
    ]
    rows = []
    for name, _, extra in variants:
        rows.append(run_variant(name, [*args.set, *[s for s in extra.split(",") if s]]))
        print(json.dumps(rows[-1]), flush=True)

    header = "| variant | steps | train s | accuracy | replay ppl before -> after | forgetting (limit) | load |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['steps']} | {r['train_seconds']} | {r['accuracy_before']:.0%} -> "
            f"{r['accuracy_after']:.0%} | {r['replay_perplexity_before']} -> {r['replay_perplexity_after']} | "
            f"{r['forgetting_ratio']} ({r['forgetting_limit']}) | {r['load_average']:.1f} |"
        )
    table = "\n".join(lines)
    print(table)
    stem = f"tiny_replay{'_' + args.tag if args.tag else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(
        f"# tiny preset, replay on and off ({date.today().isoformat()})\n\n"
        f"Common settings: {args.set or 'the tiny preset'}. Load average = 1-minute load when the variant ended "
        "(2 cores).\n\n" + table + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
