"""Does GRPO learn on the embedded tiny model? SFT first, then GRPO from that adapter, on a CPU, seed by seed.

    python bench/grpo_signal.py                        # SFT 56 steps, then GRPO 16 steps for seeds 1 2 3
    python bench/grpo_signal.py --seeds 1 --grpo-steps 10

The SFT adapter is trained once (the tiny preset's settings, fewer steps: it already tells the four topics apart and
answers most held-out prompts right, not all, so GRPO has room; a shorter start names one topic for nearly every
prompt, and GRPO then moves that one choice instead of the answer per prompt). Each seed trains GRPO from it
through the same fit loop the train stage runs (``train.method=grpo``, ``train.init_adapter``; 8 prompts x 8
completions a step), then scores greedy completions of the held-out prompts (data/sample/test.jsonl) with the
rewards: mean correctness before (SFT) and after (GRPO), and forgetting as the pipeline defines it (general-data
replay perplexity of the adapter / the base model's; limit 1.5x) and GRPO's own share of it (after GRPO / the SFT
adapter it started from). Writes
bench/results/grpo_signal-<date>.json and .md. tests/lib/training/test_grpo_signal.py runs one seed of it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

RESULTS = ROOT / "bench" / "results"
# The tiny model's activations are small: no recompute (it would add a forward pass to every step).
SFT = {"max_steps": 56, "learning_rate": 1e-2, "micro_batch_size": 16, "gradient_accumulation": 1,
       "gradient_checkpointing": False}  # fmt: skip
GRPO = {
    "learning_rate": 1e-3,
    "micro_batch_size": 16,
    # completions per step: 16 x 4 = 8 prompts x 8; with 2 prompts a step the update follows those prompts' topics
    # and GRPO moved which topic the policy answers for every prompt (bench/results/grpo_signal-2026-12-07-summary.md)
    "gradient_accumulation": 4,
    "gradient_checkpointing": False,
    # a right completion is about 25 tokens ("The sentence names two animals, ... </think> The sentence is about ...")
    "grpo": {
        "num_generations": 8,
        "max_completion_length": 32,
        "overlong_buffer": 6,
        "temperature": 1.0,
        "rewards": {"format": 0.1, "correctness": 1.0, "overlong": 1.0},
    },  # fmt: skip
}
TRAIN_ROWS, HELD_OUT, REPLAY_ROWS, REPLAY_COPIES = 400, 60, 64, 3


def tokenized(tokenizer, name: str, limit: int, out: Path) -> str:
    """The first ``limit`` rows of data/sample/<name>, tokenized as the tokenize stage does, saved for the fit."""
    from datasets import Dataset

    from r1lib.config import TokenizeConfig
    from r1lib.data.records import make_record
    from r1lib.data.row_formats import normalize
    from r1lib.io import read_jsonl
    from tasks.tokenize import tokenize_records

    rows = read_jsonl(ROOT / "data" / "sample" / name)[:limit]
    records = [make_record(normalize(r), name, i) for i, r in enumerate(rows, 1)]
    encoded, _, _ = tokenize_records(tokenizer, records, TokenizeConfig(max_seq_length=256))
    Dataset.from_list(encoded).save_to_disk(str(out))
    return str(out)


def fit_adapter(model_dir: str, dataset: str, out: Path, seed: int, **train) -> tuple[str, float, list[dict]]:
    """Train an adapter through the train stage's fit loop; (adapter folder, seconds, the logged metrics per step)."""
    from r1lib.config import TrainConfig
    from r1lib.presets import preset
    from r1lib.training.fit import FitSpec, fit

    tiny = preset("tiny")
    cfg = TrainConfig(**{**tiny.train.model_dump(), "save_steps": 1000, "logging_steps": 5, "seed": seed, **train})
    started = time.monotonic()
    outcome = fit(
        FitSpec(
            backend="hf",
            dataset_dir=dataset,
            eval_dataset_dir=None,
            model_dir=model_dir,
            model_cfg=tiny.model,
            cfg=cfg,
            max_seq_length=256,
            checkpoint_dir=str(out / "checkpoints"),
            adapter_dir=str(out / "adapter"),
            resume=None,
            micro_batch=cfg.micro_batch_size,
            accumulation=cfg.gradient_accumulation,
        )  # fmt: skip
    )
    logged = [h for h in outcome.log_history if "loss" in h]
    return str(out / "adapter"), round(time.monotonic() - started, 1), logged


def scored(model_dir: str, adapter: str | None, held_out: list[dict], replay: str) -> dict:
    """Held-out rewards and replay perplexity of an adapter (the base model when None)."""
    from peft import PeftModel

    from r1lib.model.loading import load_causal_lm, load_tokenizer, perplexity
    from r1lib.presets import preset
    from r1lib.training.reward_eval import held_out_rewards

    cfg = preset("tiny").model
    tokenizer = load_tokenizer(model_dir, trust_remote_code=False)
    model = load_causal_lm(model_dir, cfg, four_bit=cfg.load_in_4bit)
    model = PeftModel.from_pretrained(model, adapter) if adapter else model
    model.eval()
    rewards = held_out_rewards(model, tokenizer, held_out, max_new_tokens=GRPO["grpo"]["max_completion_length"])
    return {**rewards.model_dump(), "replay_perplexity": round(perplexity(model, replay, batch_size=16), 4)}


def run(
    seeds: list[int], grpo_steps: int, work: Path, sft_steps: int = SFT["max_steps"], grpo_on_task: bool = True, **grpo
) -> dict:
    """SFT once, then GRPO per seed (``grpo``: train-section fields over GRPO's); every figure the JSON holds.
    ``grpo_on_task``: GRPO samples task prompts only (the held-out task), not the general replay rows SFT mixes in."""
    from r1lib.config import EmbeddedModelConfig
    from r1lib.model.embedded import build_tokenizer, ensure_embedded_model
    from r1lib.training.methods.grpo import grpo_rows

    tokenizer = build_tokenizer()
    model_dir = str(ensure_embedded_model(EmbeddedModelConfig(), ROOT / ".cache"))
    replay = tokenized(tokenizer, "general.jsonl", REPLAY_ROWS, work / "replay")
    from datasets import concatenate_datasets, load_from_disk

    # general rows mixed in, as the tiny preset's replay does (about a third of the rows), so SFT keeps forgetting low
    task_dir = tokenized(tokenizer, "train.jsonl", TRAIN_ROWS, work / "task")
    task = load_from_disk(task_dir)
    mixed = concatenate_datasets([task] + [load_from_disk(replay)] * REPLAY_COPIES).shuffle(seed=0)
    mixed.save_to_disk(str(work / "train"))
    train = str(work / "train")

    held_out, refused = grpo_rows(load_from_disk(tokenized(tokenizer, "test.jsonl", HELD_OUT, work / "test")),
                                  tokenizer, 200)  # fmt: skip
    assert not refused, refused
    base = scored(model_dir, None, held_out, replay)
    sft_adapter, sft_s, _ = fit_adapter(model_dir, train, work / "sft", 42, **{**SFT, "max_steps": sft_steps})
    sft = scored(model_dir, sft_adapter, held_out, replay)
    print(json.dumps({"base": base, "sft": sft}), flush=True)
    runs = []
    for seed in seeds:
        adapter, seconds, logged = fit_adapter(
            model_dir, task_dir if grpo_on_task else train, work / f"grpo-{seed}", seed,
            **{**GRPO, **grpo, "method": "grpo", "max_steps": grpo_steps, "init_adapter": sft_adapter},
        )  # fmt: skip
        after = scored(model_dir, adapter, held_out, replay)
        runs.append({
            "seed": seed, "train_seconds": seconds, "last_logged": logged[-1] if logged else {},
            # the sampled completions' mean correctness per logged step: the training-side learning curve
            "train_correctness": [round(h.get("rewards/correctness/mean", float("nan")), 3) for h in logged],
            **{f"after_{k}": v for k, v in after.items()},
            "correctness_gain": round(after["correctness"] - sft["correctness"], 4),
            "forgetting_ratio": round(after["replay_perplexity"] / base["replay_perplexity"], 4),
            "grpo_forgetting_ratio": round(after["replay_perplexity"] / sft["replay_perplexity"], 4),
        })  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
    gains = [r["correctness_gain"] for r in runs]
    settings = {**GRPO, **grpo}
    return {
        "date": date.today().isoformat(),
        "held_out_prompts": len(held_out),
        "sft": {"steps": sft_steps, "seconds": sft_s, **SFT, "max_steps": sft_steps},
        "grpo": {
            "steps": grpo_steps,
            "prompts": "task rows" if grpo_on_task else "task + replay rows",
            **settings,
            "prompts_per_step": settings["micro_batch_size"]
            * settings["gradient_accumulation"]
            // settings["grpo"]["num_generations"],
        },  # fmt: skip
        "base": base,
        "before_sft": sft,
        "sft_forgetting_ratio": round(sft["replay_perplexity"] / base["replay_perplexity"], 4),
        "runs": runs,
        "gain_mean": round(statistics.mean(gains), 4),
        "gain_min": min(gains),
        "gain_max": max(gains),
        "forgetting_limit": 1.5,
        "load_average": round(os.getloadavg()[0], 2),
    }


def table(result: dict) -> str:
    lines = [
        "| seed | GRPO s | correctness SFT -> GRPO | format | think closed | new tokens | replay ppl | "
        "GRPO's forgetting (after / SFT) | forgetting (after / base) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sft = result["before_sft"]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {r['train_seconds']} | {sft['correctness']:.1%} -> {r['after_correctness']:.1%} "
            f"({r['correctness_gain']:+.1%}) | {sft['format']:.0%} -> {r['after_format']:.0%} | "
            f"{sft['think_closed']:.0%} -> {r['after_think_closed']:.0%} | {sft['mean_new_tokens']} -> "
            f"{r['after_mean_new_tokens']} | {sft['replay_perplexity']} -> {r['after_replay_perplexity']} | "
            f"{r['after_replay_perplexity'] / sft['replay_perplexity']:.3f}x | {r['forgetting_ratio']}x |"
        )
    return "\n".join(lines)


def main() -> int:
    import tempfile

    from r1lib.process import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--grpo-steps", type=int, default=16)
    parser.add_argument("--sft-steps", type=int, default=SFT["max_steps"])
    parser.add_argument("--learning-rate", type=float, default=GRPO["learning_rate"], help="of GRPO")
    parser.add_argument("--temperature", type=float, default=GRPO["grpo"]["temperature"])
    parser.add_argument("--beta", type=float, default=0.04, help="train.grpo.beta (KL towards the SFT adapter)")
    parser.add_argument("--format-weight", type=float, default=0.1, help="train.grpo.rewards.format")
    parser.add_argument("--prompts-per-step", type=int, default=8, help="of GRPO (x num_generations completions)")
    parser.add_argument("--grpo-on-mixed", action="store_true", help="GRPO on the SFT mix (task + replay rows)")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    rewards = {"format": args.format_weight, "correctness": 1.0, "overlong": 1.0}
    accumulation, rest = divmod(args.prompts_per_step * GRPO["grpo"]["num_generations"], GRPO["micro_batch_size"])
    if rest or not accumulation:
        parser.error(f"--prompts-per-step x {GRPO['grpo']['num_generations']} must be a multiple of "
                     f"{GRPO['micro_batch_size']}")  # fmt: skip
    grpo = {"learning_rate": args.learning_rate, "gradient_accumulation": accumulation,
            "grpo": {**GRPO["grpo"], "temperature": args.temperature, "beta": args.beta,
                     "rewards": rewards}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="grpo-signal-") as work:
        result = run(args.seeds, args.grpo_steps, Path(work), args.sft_steps, not args.grpo_on_mixed, **grpo)
    text = table(result)
    print(text)
    stem = f"grpo_signal-{result['date']}{'-' + args.tag if args.tag else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(
        f"# GRPO on the embedded tiny model, from its SFT adapter ({result['date']})\n\n"
        f"`python bench/grpo_signal.py {' '.join(sys.argv[1:])}`: SFT {result['sft']['steps']} steps, then GRPO "
        f"{result['grpo']['steps']} steps ({result['grpo']['grpo']['num_generations']} completions per prompt, "
        f"{result['grpo']['prompts_per_step']} prompts per step) per seed; "
        f"{result['held_out_prompts']} held-out prompts, greedy. Base model correctness "
        f"{result['base']['correctness']:.1%}, replay perplexity {result['base']['replay_perplexity']}; the SFT "
        f"adapter's forgetting {result['sft_forgetting_ratio']}x (limit {result['forgetting_limit']}x). "
        f"Correctness gain: mean {result['gain_mean']:+.1%}, "
        f"min {result['gain_min']:+.1%}, max {result['gain_max']:+.1%}. Load average {result['load_average']} "
        "(2 cores).\n\n" + text + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
