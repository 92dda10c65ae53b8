"""Tokenization throughput: tasks.tokenize.encode_row (Jinja template + two tokenizer calls per row) against
encode_batch (template shapes filled in, one batched tokenizer call per chunk), on the embedded tokenizer (the real
Qwen2 BPE with DeepSeek-R1's special tokens and the official R1 template).

    .venv/bin/python bench/tokenize_throughput.py                 # ~20,000 rows
    .venv/bin/python bench/tokenize_throughput.py --base 1000     # a quicker look

The rows are sample-like and go through the project's own augment and debias code, as in the data stages: base
records (short English arithmetic, Chinese, worded reasoning, a few long ones; 20% with a system prompt, 10% with an
earlier turn, a few of whose earlier answers hold "</think>", which the R1 template rewrites) -> augment.expand (two
prompt wordings + the three text variants) -> debias.debias_rows (counterfactual twins). encode_batch runs in chunks
of tasks.tokenize.CHUNK_ROWS, on the rows in the order augment.expand writes them (a record's variants in the same
chunk as in bench/data_throughput.py, where completions are shared) and shuffled (as augment.augment writes the whole
set: siblings rarely share a chunk). Every row of encode_batch is compared with encode_row's.

Speed is rows per wall second and per CPU second of this process (time.process_time): the 2 cores are shared, so the
wall figure depends on the others' load. Writes bench/results/tokenize_throughput.json.
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

NAMES = [("Tom", "he", "his"), ("Ann", "she", "her"), ("My brother", "he", "his"), ("The king", "he", "his"),
         ("Maria", "she", "her"), ("The boy", "he", "his"), ("A student", "they", "their"), ("She", "she", "her")]
ITEMS = ["apple", "book", "coin", "pencil", "marble", "stamp", "card", "shell"]
ZH = [("小明", "他"), ("小红", "她"), ("老师", "他")]
ZH_ITEMS = ["苹果", "书", "铅笔", "硬币"]
WORDS = ("the model checks each step and writes down what it knows before it moves on so the final answer follows "
         "from the facts given in the question rather than from a guess first then next because therefore since "
         "each value sum total count result").split()
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
        prompt = f"{name} packs {a} boxes with {b} cards each and gives away {c}. How many cards are left in {poss} boxes?"
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
            {"role": "user", "content": "Can I ask you something?"}, {"role": "assistant", "content": earlier},
            {"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        return {"messages": messages}
    return {"instruction": prompt, "output": output, **({"system": system} if system else {})}


def make_rows(n_base: int, seed: int = 0) -> list[dict]:
    """Sample-like tokenize-stage input: base records -> augment.expand -> debias.debias_rows."""
    from tasks.augment import expand, load_templates
    from tasks.config import AugmentConfig, DebiasConfig
    from tasks.debias import TermPairs, compile_terms, load_blocklist
    from tasks.debias import debias_rows
    from tasks.records import make_record, normalize

    rng = random.Random(seed)
    base = [make_record(normalize(base_row(rng)), "bench.jsonl", i + 1) for i in range(n_base)]
    acfg = AugmentConfig(prompt_variants=2, text_variants=["whitespace", "punctuation", "question_first"])
    rows = expand(base, acfg, load_templates(Path(acfg.templates_path)), random.Random(seed))
    dcfg = DebiasConfig()
    rows, _, _, _ = debias_rows(rows, compile_terms(load_blocklist(Path(dcfg.blocklist_path))),
                                TermPairs.load(Path(dcfg.term_pairs_path)), True)
    return rows


def measure(fn, rows: int) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"rows": rows, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "rows_per_s": round(rows / wall),
            "rows_per_cpu_s": round(rows / cpu), "out": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=int, default=3300, help="base records (~6 rows each after augment/debias)")
    parser.add_argument("--modes", default="keep,mask,drop", help="think_in_loss policies to run")
    args = parser.parse_args()

    import tokenizers
    import transformers

    from tasks.chat_template import chat_renderer
    from tasks.config import TokenizeConfig
    from tasks.embedded import build_tokenizer
    from tasks.tokenize import CHUNK_ROWS, encode_batch, encode_row, tokenize_records

    tokenizer = build_tokenizer()
    rows = make_rows(args.base)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    n = len(rows)
    multi = sum(len(r["messages"]) > 2 for r in rows)
    print(f"{n} rows from {args.base} base records ({n / args.base:.1f} each), {multi} multi-turn; "
          f"chunks of {CHUNK_ROWS}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
          f"TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', '(unset)')}")

    def batched(data, cfg):
        out = []
        for start in range(0, len(data), CHUNK_ROWS):
            out += encode_batch(tokenizer, data[start:start + CHUNK_ROWS], cfg)
        return out

    results = []
    print(f"{'policy':<6} {'order':<9} {'encode_row rows/s (wall / CPU)':>31} {'encode_batch rows/s (wall / CPU)':>33} "
          f"{'ratio (CPU)':>11}  equal")
    for mode in args.modes.split(","):
        cfg = TokenizeConfig(think_in_loss=mode)
        row = measure(lambda: [encode_row(tokenizer, r, cfg) for r in rows], n)
        reference = row.pop("out")
        for order, data in (("expand", rows), ("shuffled", shuffled)):
            load = os.getloadavg()[0]
            batch = measure(lambda: batched(data, cfg), n)
            got = batch.pop("out")
            expected = reference if data is rows else [encode_row(tokenizer, r, cfg) for r in data]
            equal = got == expected
            results.append({"think_in_loss": mode, "order": order, "encode_row": row, "encode_batch": batch,
                            "ratio_cpu": round(batch["rows_per_cpu_s"] / row["rows_per_cpu_s"], 2),
                            "ratio_wall": round(batch["rows_per_s"] / row["rows_per_s"], 2),
                            "equal_rows": equal, "load_average_1m": round(load, 2)})
            print(f"{mode:<6} {order:<9} {row['rows_per_s']:>14,} / {row['rows_per_cpu_s']:>14,} "
                  f"{batch['rows_per_s']:>16,} / {batch['rows_per_cpu_s']:>14,} {results[-1]['ratio_cpu']:>10}x  {equal}")
            if not equal:
                raise SystemExit(f"encode_batch differs from encode_row ({mode}, {order})")
    stage = measure(lambda: tokenize_records(tokenizer, shuffled, TokenizeConfig(max_seq_length=1024))[0], n)
    stage.pop("out")
    print(f"tokenize_records (stage loop: encode_batch + length policy + BOS check + audit, shuffled): "
          f"{stage['rows_per_s']:,} rows/s wall, {stage['rows_per_cpu_s']:,} rows/CPU-s")
    stats = chat_renderer(tokenizer, add_generation_prompt=True).stats
    print(f"template: {stats}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "what": "tasks.tokenize.encode_row vs encode_batch on the embedded R1-Distill-Qwen tokenizer",
        "rows": n, "base_records": args.base, "multi_turn_rows": multi, "chunk_rows": CHUNK_ROWS,
        "results": results, "tokenize_records": stage, "template_stats": stats,
        "machine": {"cpus": os.cpu_count(), "load_average_end": [round(x, 2) for x in os.getloadavg()],
                    "python": platform.python_version(), "transformers": transformers.__version__,
                    "tokenizers": tokenizers.__version__,
                    "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM")},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
