"""Tokenization throughput: tasks.tokenize.encode_row (Jinja template + two tokenizer calls per row) against
encode_batch (template shapes filled in, one batched tokenizer call per chunk), on the embedded tokenizer (the real
Qwen2 BPE with DeepSeek-R1's special tokens and the official R1 template).

    .venv/bin/python bench/tokenize_throughput.py                 # ~20,000 rows (+ the shipped samples)
    .venv/bin/python bench/tokenize_throughput.py --base 1000     # a quicker look

Two sets of rows, both through the project's own augment and debias code, streamed as the sharded data stages do
(augment.expand on chunks of 2,000 records: one prompt wording + the punctuation and question_first text variants;
then debias.debias_rows on chunks of 2,000 rows, counterfactual twins appended: ~6 rows per record):
  mixed    generated records like bench/data_throughput.py's: short English arithmetic, Chinese, worded reasoning, a
           few long ones; 20% with a system prompt, 10% with an earlier turn, a few of whose earlier answers hold
           "</think>" (which the R1 template rewrites, so those rows must go through Jinja);
  sample   the shipped data/sample/{train,test,general}.jsonl records (short rows).
encode_batch runs in chunks of tasks.tokenize.CHUNK_ROWS with one tasks.tokenize.IdsCache (as tokenize_records
does), on the rows in that streamed order (a record's variants within a few thousand rows of it) and shuffled (the
worst case for sharing completions). Every row of encode_batch is compared with encode_row's.

Speed is rows per wall second and per CPU second of this process (time.process_time), the best of ``--repeat`` runs
(medians in the JSON): the 2 cores are shared, so the wall figure depends on the others' load, and under load even
CPU time stretches (shared caches and hyper-threads). Writes bench/results/tokenize_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

RESULTS = ROOT / "bench" / "results" / "tokenize_throughput.json"
STREAM_CHUNK = 2_000  # rows an augment/debias shard holds at once (r1lib/data/shards.py CHUNK)

NAMES = [
    ("Tom", "he", "his"),
    ("Ann", "she", "her"),
    ("My brother", "he", "his"),
    ("The king", "he", "his"),
    ("Maria", "she", "her"),
    ("The boy", "he", "his"),
    ("A student", "they", "their"),
    ("She", "she", "her"),
]
ITEMS = ["apple", "book", "coin", "pencil", "marble", "stamp", "card", "shell"]
ZH = [("小明", "他"), ("小红", "她"), ("老师", "他")]
ZH_ITEMS = ["苹果", "书", "铅笔", "硬币"]
WORDS = (
    "the model checks each step and writes down what it knows before it moves on so the final answer follows "
    "from the facts given in the question rather than from a guess first then next because therefore since "
    "each value sum total count result"
).split()
SYSTEMS = ["You are a careful math tutor.", "Answer briefly.", "你是一位耐心的老师。"]


def base_row(rng: random.Random) -> dict:
    """One raw row in the seed's instruction/output form (sometimes OpenAI messages, for systems and history)."""
    kind = rng.random()
    if kind < 0.6:
        name, pron, _ = rng.choice(NAMES)
        item, a, b = rng.choice(ITEMS), rng.randint(1, 999), rng.randint(1, 999)
        prompt = f"{name} has {a} {item}s and gets {b} more. How many {item}s does {pron} have now?"
        reasoning, answer = f"{name} starts with {a} {item}s. Adding {b} gives {a} + {b} = {a + b}.", f"{a + b}"
    elif kind < 0.75:
        name, pron = rng.choice(ZH)
        item, a, b = rng.choice(ZH_ITEMS), rng.randint(1, 999), rng.randint(1, 999)
        prompt = f"{name}有{a}个{item}，又买了{b}个。{pron}现在有几个{item}？"
        reasoning, answer = f"{a}加{b}等于{a + b}。", f"{a + b}个"
    elif kind < 0.97:
        name, _, poss = rng.choice(NAMES)
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        prompt = (
            f"{name} packs {a} boxes with {b} cards each and gives away {c}. How many cards are left in {poss} boxes?"
        )
        reasoning = " ".join(rng.choices(WORDS, k=rng.randint(40, 120))) + f". ({a} - {c}) x {b} = {(a - c) * b}."
        answer = f"{(a - c) * b} cards."
    else:
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        prompt = f"Explain step by step how to multiply {a} by {b}."
        reasoning, answer = " ".join(rng.choices(WORDS, k=rng.randint(200, 600))) + f". {a * b}.", f"{a * b}"
    output = f"<think>\n{reasoning}\n</think>\n\n{answer}"
    system = rng.choice(SYSTEMS) if rng.random() < 0.2 else ""
    if rng.random() < 0.1:  # an earlier turn; a few earlier answers hold "</think>" (the R1 template cuts there)
        earlier = "Sure, ask away." if rng.random() < 0.95 else "Earlier I wrote </think> by mistake. Ask away."
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "Can I ask you something?"},
            {"role": "assistant", "content": earlier},
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": output},
        ]
        return {"messages": messages}
    return {"instruction": prompt, "output": output, **({"system": system} if system else {})}


def make_rows(n_base: int, seed: int = 0, base: list[dict] | None = None) -> list[dict]:
    """Tokenize-stage input: base records (generated, or ``base``) -> augment.expand -> debias.debias_rows."""
    from r1lib.config import AugmentConfig, DebiasConfig
    from r1lib.data.records import make_record
    from r1lib.data.row_formats import normalize
    from r1lib.data.terms import TermPairs, compile_terms, load_blocklist
    from tasks.augment import expand, load_templates
    from tasks.debias import debias_rows

    rng = random.Random(seed)
    if base is None:
        base = [make_record(normalize(base_row(rng)), "bench.jsonl", i + 1) for i in range(n_base)]
    acfg = AugmentConfig(prompt_variants=1, text_variants=["punctuation", "question_first"])
    templates, rng = load_templates(Path(acfg.templates_path)), random.Random(seed)
    augmented = [
        row
        for i in range(0, len(base), STREAM_CHUNK)
        for row in expand(base[i : i + STREAM_CHUNK], acfg, templates, rng)
    ]
    dcfg = DebiasConfig()
    blocklist = compile_terms(load_blocklist(Path(dcfg.blocklist_path)))
    pairs = TermPairs.load(Path(dcfg.term_pairs_path))
    return [
        row
        for i in range(0, len(augmented), STREAM_CHUNK)
        for row in debias_rows(augmented[i : i + STREAM_CHUNK], blocklist, pairs, True)[0]
    ]


def measure(fn, rows: int, repeat: int) -> dict:
    """Best of ``repeat`` runs (least CPU time; the neighbours' load only ever adds time) and the medians."""
    runs = []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        runs.append((time.process_time() - cpu, time.perf_counter() - wall))
    cpu, wall = min(runs)
    cpus, walls = sorted(c for c, _ in runs), sorted(w for _, w in runs)
    return {
        "rows": rows,
        "repeat": repeat,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "rows_per_s": round(rows / wall),
        "rows_per_cpu_s": round(rows / cpu),
        "median_rows_per_s": round(rows / walls[len(runs) // 2]),
        "median_rows_per_cpu_s": round(rows / cpus[len(runs) // 2]),
        "out": out,
    }


def time_parts(tokenizer, rows: list[dict], batched, repeat: int) -> dict:
    """Where encode_batch's CPU time goes (best of ``repeat``): the template (render_prompts), the tokenizer
    (encode_texts: the Rust call) and the rest (Python: texts, dedup, assembling the rows)."""
    import tasks.tokenize as tk
    from r1lib.config import TokenizeConfig

    spent = {"render": 0.0, "tokenizer": 0.0}
    originals = tk.render_prompts, tk.encode_texts

    def timed(name, fn):
        def wrapper(*args):
            start = time.process_time()
            try:
                return fn(*args)
            finally:
                spent[name] += time.process_time() - start

        return wrapper

    tk.render_prompts, tk.encode_texts = timed("render", originals[0]), timed("tokenizer", originals[1])
    best = None
    try:
        for _ in range(repeat):
            spent.update(render=0.0, tokenizer=0.0)
            start = time.process_time()
            batched(rows, TokenizeConfig())
            total = time.process_time() - start
            if best is None or total < best[0]:
                best = (total, dict(spent))
    finally:
        tk.render_prompts, tk.encode_texts = originals
    total, parts = best
    us = lambda seconds: round(seconds * 1e6 / len(rows), 1)  # noqa: E731
    return {
        "total": us(total),
        "template": us(parts["render"]),
        "tokenizer (Rust)": us(parts["tokenizer"]),
        "python": us(total - parts["render"] - parts["tokenizer"]),
    }


def sample_records() -> list[dict]:
    from tasks.validate import validate_file

    return [r for name in ("train", "test", "general") for r in validate_file(f"data/sample/{name}.jsonl", 100_000)[0]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=3400, help="generated base records (~6 rows each)")
    parser.add_argument("--modes", default="keep,mask,drop", help="think_in_loss policies to run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (the best is reported)")
    args = parser.parse_args()

    import tokenizers
    import transformers

    from r1lib.config import TokenizeConfig
    from r1lib.data.chat_render import chat_renderer
    from r1lib.model.embedded import build_tokenizer
    from tasks.tokenize import CHUNK_ROWS, IdsCache, encode_batch, encode_row, tokenize_records

    tokenizer = build_tokenizer()
    sets = {"mixed": make_rows(args.base), "sample": make_rows(0, base=sample_records())}
    print(
        f"chunks of {CHUNK_ROWS}; {os.cpu_count()} CPUs; TOKENIZERS_PARALLELISM="
        f"{os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}"
    )
    for name, rows in sets.items():
        print(f"{name}: {len(rows)} rows, {sum(len(r['messages']) > 2 for r in rows)} multi-turn")

    def batched(data, cfg):
        out, cache = [], IdsCache(tokenizer)
        for start in range(0, len(data), CHUNK_ROWS):
            out += encode_batch(tokenizer, data[start : start + CHUNK_ROWS], cfg, cache)
        return out

    warm = make_rows(50, seed=99)  # untimed: imports, template shapes, the tokenizer's word cache, for both
    for mode in args.modes.split(","):
        [encode_row(tokenizer, r, TokenizeConfig(think_in_loss=mode)) for r in warm]
        batched(warm, TokenizeConfig(think_in_loss=mode))

    results = []
    print(
        f"{'set':<7} {'policy':<6} {'order':<9} {'encode_row rows/s (wall / CPU)':>31} "
        f"{'encode_batch rows/s (wall / CPU)':>33} {'CPU ratio':>9}  load  equal"
    )
    for name, rows in sets.items():
        n = len(rows)
        perm = list(range(n))
        random.Random(1).shuffle(perm)
        for mode in args.modes.split(","):
            cfg = TokenizeConfig(think_in_loss=mode)
            row = measure(lambda cfg=cfg, rows=rows: [encode_row(tokenizer, r, cfg) for r in rows], n, args.repeat)
            reference = row.pop("out")
            for order, index in (("streamed", list(range(n))), ("shuffled", perm)):
                data = [rows[i] for i in index]
                load = os.getloadavg()[0]
                batch = measure(lambda data=data, cfg=cfg: batched(data, cfg), n, args.repeat)
                equal = batch.pop("out") == [reference[i] for i in index]
                results.append(
                    {
                        "set": name,
                        "think_in_loss": mode,
                        "order": order,
                        "encode_row": row,
                        "encode_batch": batch,
                        "ratio_cpu": round(batch["rows_per_cpu_s"] / row["rows_per_cpu_s"], 2),
                        "ratio_wall": round(batch["rows_per_s"] / row["rows_per_s"], 2),
                        "equal_rows": equal,
                        "load_average_1m": round(load, 2),
                    }
                )
                print(
                    f"{name:<7} {mode:<6} {order:<9} {row['rows_per_s']:>14,} / {row['rows_per_cpu_s']:>14,} "
                    f"{batch['rows_per_s']:>16,} / {batch['rows_per_cpu_s']:>14,} {results[-1]['ratio_cpu']:>8}x "
                    f"{load:>5.1f}  {equal}"
                )
                if not equal:
                    raise SystemExit(f"encode_batch differs from encode_row ({name}, {mode}, {order})")
    breakdown = time_parts(tokenizer, sets["mixed"], batched, args.repeat)
    print("encode_batch, mixed/keep/streamed, CPU us per row: " + ", ".join(f"{k} {v}" for k, v in breakdown.items()))
    rows = sets["mixed"]
    stage = measure(
        lambda: tokenize_records(tokenizer, rows, TokenizeConfig(max_seq_length=1024))[0], len(rows), args.repeat
    )
    stage.pop("out")
    print(
        f"tokenize_records (the stage's loop: encode_batch + length policy + BOS check + audit; mixed, streamed "
        f"order): {stage['rows_per_s']:,} rows/s wall, {stage['rows_per_cpu_s']:,} rows/CPU-s"
    )
    stats = chat_renderer(tokenizer, add_generation_prompt=True).stats
    print(f"template rows: {stats}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "what": "tasks.tokenize.encode_row vs encode_batch on the embedded R1-Distill-Qwen tokenizer",
                "sets": {
                    name: {"rows": len(rows), "multi_turn_rows": sum(len(r["messages"]) > 2 for r in rows)}
                    for name, rows in sets.items()
                },
                "base_records_mixed": args.base,
                "chunk_rows": CHUNK_ROWS,
                "results": results,
                "tokenize_records_mixed": stage,
                "template_rows": stats,
                "encode_batch_cpu_us_per_row_mixed_keep": breakdown,
                "machine": {
                    "cpus": os.cpu_count(),
                    "load_average_end": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(),
                    "transformers": transformers.__version__,
                    "tokenizers": tokenizers.__version__,
                    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM"),
                },
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
