"""Does GRPO learn on the embedded tiny model? SFT first, then GRPO from that adapter, on a CPU, seed by seed.

    python bench/grpo_signal.py                        # SFT 56 steps, then GRPO 8 steps for seeds 1 2 3
    python bench/grpo_signal.py --seeds 1 --grpo-steps 4 --tag try

The SFT adapter is trained once (the tiny preset's settings, fewer steps: it tells the four topics apart and answers
most held-out prompts right, not all, so GRPO has room). Each seed trains GRPO from it through the same fit loop the
train stage runs (``train.method=grpo``, ``train.init_adapter``; 16 prompts x 8 completions a step). Every model
(base, SFT, GRPO per seed) is scored on the held-out prompts (data/sample/test.jsonl) two ways: the mean correctness
reward of completions sampled as GRPO samples them (its temperature, ``num_generations`` per prompt, one fixed
sampling seed, so before and after differ by the model alone; with the standard error of that mean from the sampling)
- the quantity GRPO optimizes - and the greedy answer's correctness, format and length. Forgetting: as the pipeline
defines it (general-data replay perplexity of the adapter / the base model's; limit 1.5x) and GRPO's own share (after
GRPO / the SFT adapter it started from). The gains' mean, min, max and stdev over the seeds, and the load average,
go to bench/results/grpo_signal-<date>[-tag].json and .md. tests/lib/training/test_grpo_signal.py runs one seed.
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
    # completions per step: 16 x 8 = 16 prompts x 8; with 2 prompts a step the update follows those prompts' topics
    # and GRPO moved which topic the policy answers for every prompt (bench/results/grpo_signal-2026-12-07-summary.md)
    "gradient_accumulation": 8,
    "gradient_checkpointing": False,
    # a right completion is about 25 tokens ("The sentence names two animals, ... </think> The sentence is about ...")
    "grpo": {
        "num_generations": 8,
        "max_completion_length": 32,
        "overlong_buffer": 6,
        "temperature": 1.0,
        "beta": 0.04,
        "loss_type": "dapo",
        "rewards": {"format": 0.1, "correctness": 1.0, "overlong": 1.0},
    },  # fmt: skip
}
TRAIN_ROWS, HELD_OUT, REPLAY_ROWS, REPLAY_COPIES = 400, 60, 64, 3
GRPO_STEPS = 8
SAMPLING_SEED = 1234  # of the held-out sampling, the same for every model scored


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


def sampled_correctness(model, tokenizer, rows: list[dict], sampling: dict) -> dict:
    """The mean correctness reward of completions sampled as GRPO samples them (its temperature, ``num_generations``
    per prompt): what GRPO optimizes. One fixed sampling seed, so every model draws the same random numbers and
    before/after differ by the model alone. ``noise``: the standard error of the mean from the sampling alone (the
    prompts fixed), from the per-prompt spread over ``num_generations`` draws."""
    import torch

    from r1lib.config import EvalConfig
    from r1lib.model.generation import generate
    from r1lib.training.rewards import correctness_reward

    n = sampling["num_generations"]
    cfg = EvalConfig(temperature=sampling["temperature"], top_p=sampling.get("top_p", 1.0), batch_size=64,
                     time_limit_s=3600, max_new_tokens=sampling["max_completion_length"])  # fmt: skip
    # grpo rows leave out a BOS the tokenizer adds itself; generate() tokenizes without special tokens
    bos = tokenizer.bos_token if tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id] else ""
    torch.manual_seed(SAMPLING_SEED)
    completions, _ = generate(model, tokenizer, [bos + r["prompt"] for r in rows for _ in range(n)], cfg)
    assert all(c is not None for c in completions), "sampling stopped by its time limit"
    right = [correctness_reward(c, r["answer"]) for c, r in zip(completions, [r for r in rows for _ in range(n)])]
    per_prompt = [statistics.mean(right[i : i + n]) for i in range(0, len(right), n)]
    # unbiased per-prompt variance of one draw (n / (n - 1)), over n draws, averaged over the prompts
    variance = sum(p * (1 - p) * n / (n - 1) / n for p in per_prompt) / len(per_prompt) ** 2
    return {
        "correctness": round(statistics.mean(right), 4),
        "noise": round(variance**0.5, 4),
        "prompts_mixed": round(sum(0 < p < 1 for p in per_prompt) / len(per_prompt), 4),
    }


def scored(model_dir: str, adapter: str | None, held_out: list[dict], replay: str, sampling: dict) -> dict:
    """Held-out rewards (greedy) and sampled mean correctness reward, and replay perplexity of an adapter (the base
    model when None)."""
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
    return {**rewards.model_dump(), "sampled": sampled_correctness(model, tokenizer, held_out, sampling),
            "replay_perplexity": round(perplexity(model, replay, batch_size=16), 4)}  # fmt: skip


def run(
    seeds: list[int],
    work: Path,
    grpo_steps: int = GRPO_STEPS,
    sft_steps: int = SFT["max_steps"],
    grpo_on_task: bool = True,
    **grpo,
) -> dict:
    """SFT once, then GRPO per seed (``grpo``: train-section fields over GRPO's); every figure the JSON holds.
    ``grpo_on_task``: GRPO samples task prompts only (the held-out task), not the general replay rows SFT mixes in."""
    from r1lib.config import EmbeddedModelConfig
    from r1lib.model.embedded import build_tokenizer, ensure_embedded_model
    from r1lib.training.methods.grpo import grpo_rows

    load_start = [round(x, 2) for x in os.getloadavg()]
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
    settings = {**GRPO, **grpo}
    base = scored(model_dir, None, held_out, replay, settings["grpo"])
    sft_adapter, sft_s, _ = fit_adapter(model_dir, train, work / "sft", 42, **{**SFT, "max_steps": sft_steps})
    sft = scored(model_dir, sft_adapter, held_out, replay, settings["grpo"])
    print(json.dumps({"base": base, "sft": sft}), flush=True)
    runs = []
    for seed in seeds:
        adapter, seconds, logged = fit_adapter(
            model_dir, task_dir if grpo_on_task else train, work / f"grpo-{seed}", seed,
            **{**GRPO, **grpo, "method": "grpo", "max_steps": grpo_steps, "init_adapter": sft_adapter},
        )  # fmt: skip
        after = scored(model_dir, adapter, held_out, replay, settings["grpo"])
        runs.append({
            "seed": seed, "train_seconds": seconds, "last_logged": logged[-1] if logged else {},
            # the sampled completions' mean correctness per logged step: the training-side learning curve
            "train_correctness": [round(h.get("rewards/correctness/mean", float("nan")), 3) for h in logged],
            **{f"after_{k}": v for k, v in after.items()},
            "sampled_gain": round(after["sampled"]["correctness"] - sft["sampled"]["correctness"], 4),
            "sampled_gain_noise": round((after["sampled"]["noise"] ** 2 + sft["sampled"]["noise"] ** 2) ** 0.5, 4),
            "greedy_gain": round(after["correctness"] - sft["correctness"], 4),
            "forgetting_ratio": round(after["replay_perplexity"] / base["replay_perplexity"], 4),
            "grpo_forgetting_ratio": round(after["replay_perplexity"] / sft["replay_perplexity"], 4),
        })  # fmt: skip
        print(json.dumps(runs[-1]), flush=True)
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
        "sampled_gain": spread([r["sampled_gain"] for r in runs]),
        "greedy_gain": spread([r["greedy_gain"] for r in runs]),
        "forgetting_limit": 1.5,
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
    }


def spread(gains: list[float]) -> dict:
    """Mean, min, max and sample stdev (0 for one seed) of per-seed gains."""
    stdev = statistics.stdev(gains) if len(gains) > 1 else 0.0
    return {"mean": round(statistics.mean(gains), 4), "min": min(gains), "max": max(gains), "stdev": round(stdev, 4)}


def table(result: dict) -> str:
    lines = [
        "| seed | GRPO s | sampled mean correctness SFT -> GRPO (+- noise) | greedy correctness SFT -> GRPO | format "
        "| think closed | new tokens | replay ppl | GRPO's forgetting (after / SFT) | forgetting (after / base) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    sft = result["before_sft"]
    for r in result["runs"]:
        lines.append(
            f"| {r['seed']} | {r['train_seconds']} | {sft['sampled']['correctness']:.1%} -> "
            f"{r['after_sampled']['correctness']:.1%} ({r['sampled_gain']:+.1%} +- {r['sampled_gain_noise']:.1%}) | "
            f"{sft['correctness']:.1%} -> {r['after_correctness']:.1%} "
            f"({r['greedy_gain']:+.1%}) | {sft['format']:.0%} -> {r['after_format']:.0%} | "
            f"{sft['think_closed']:.0%} -> {r['after_think_closed']:.0%} | {sft['mean_new_tokens']} -> "
            f"{r['after_mean_new_tokens']} | {sft['replay_perplexity']} -> {r['after_replay_perplexity']} | "
            f"{r['after_replay_perplexity'] / sft['replay_perplexity']:.3f}x | {r['forgetting_ratio']}x |"
        )
    return "\n".join(lines)


def report(result: dict, argv: str) -> str:
    """The dated .md: settings, the sampled and greedy gains with their seed spread, the per-seed table."""
    grpo, sampled, greedy, base = result["grpo"], result["sampled_gain"], result["greedy_gain"], result["base"]
    noise = max(r["sampled_gain_noise"] for r in result["runs"])
    fell = sum(r["greedy_gain"] < 0 for r in result["runs"])
    return (
        f"# GRPO on the embedded tiny model, from its SFT adapter ({result['date']})\n\n"
        f"`python bench/grpo_signal.py {argv}`: SFT {result['sft']['steps']} steps "
        f"(lr {result['sft']['learning_rate']}), then GRPO {grpo['steps']} steps per seed "
        f"(lr {grpo['learning_rate']}, beta {grpo['grpo']['beta']}, loss {grpo['grpo'].get('loss_type', 'dapo')}, "
        f"T {grpo['grpo']['temperature']}, "
        f"{grpo['prompts_per_step']} prompts x {grpo['grpo']['num_generations']} completions a step, "
        f"{grpo['prompts']}). {result['held_out_prompts']} held-out prompts (data/sample/test.jsonl), scored two ways: "
        f"the mean correctness reward of {grpo['grpo']['num_generations']} completions sampled per prompt at "
        f"T {grpo['grpo']['temperature']} (what GRPO optimizes; sampling seed {SAMPLING_SEED}, the same for every "
        "model) and the greedy answer.\n\n"
        f"- Sampled mean correctness reward gain over seeds {[r['seed'] for r in result['runs']]}: mean "
        f"{sampled['mean']:+.1%}, min {sampled['min']:+.1%}, max {sampled['max']:+.1%}, stdev {sampled['stdev']:.1%}"
        f" (sampling noise of one gain, 1 standard error: at most {noise:.1%}).\n"
        f"- Greedy correctness gain: mean {greedy['mean']:+.1%}, min {greedy['min']:+.1%}, max {greedy['max']:+.1%}, "
        f"stdev {greedy['stdev']:.1%}; greedy fell in {fell} of {len(result['runs'])} seeds.\n"
        f"- Forgetting (replay perplexity / the base model's, limit {result['forgetting_limit']}x): SFT "
        f"{result['sft_forgetting_ratio']}x, after GRPO up to {max(r['forgetting_ratio'] for r in result['runs'])}x;"
        f" GRPO's own (after / SFT) up to {max(r['grpo_forgetting_ratio'] for r in result['runs'])}x.\n"
        f"- Base model: greedy {base['correctness']:.1%}, sampled {base['sampled']['correctness']:.1%}, "
        f"replay perplexity {base['replay_perplexity']}. Load average (1, 5, 15 min) at start "
        f"{result['load_average']['start']}, at end {result['load_average']['end']} (2 cores).\n\n"
        + table(result)
        + "\n"
    )


def main() -> int:
    import tempfile

    from r1lib.process import apply_defaults

    apply_defaults()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--grpo-steps", type=int, default=GRPO_STEPS)
    parser.add_argument("--sft-steps", type=int, default=SFT["max_steps"])
    parser.add_argument("--learning-rate", type=float, default=GRPO["learning_rate"], help="of GRPO")
    parser.add_argument("--temperature", type=float, default=GRPO["grpo"]["temperature"])
    parser.add_argument(
        "--beta", type=float, default=GRPO["grpo"]["beta"], help="train.grpo.beta (KL towards the SFT adapter)"
    )
    parser.add_argument("--format-weight", type=float, default=0.1, help="train.grpo.rewards.format")
    per_step = GRPO["micro_batch_size"] * GRPO["gradient_accumulation"] // GRPO["grpo"]["num_generations"]
    parser.add_argument(
        "--prompts-per-step", type=int, default=per_step, help="of GRPO (x num_generations completions)"
    )
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
        result = run(args.seeds, Path(work), args.grpo_steps, args.sft_steps, not args.grpo_on_mixed, **grpo)
    stem = f"grpo_signal-{result['date']}{'-' + args.tag if args.tag else ''}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    (RESULTS / f"{stem}.md").write_text(report(result, " ".join(sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
