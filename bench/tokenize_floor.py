"""The floor under the data stages' throughput: what the Hugging Face tokenizer's Rust BPE alone costs for the texts
the tokenize stage must encode, with no Python work per row, on both cores.

    .venv/bin/python bench/data_throughput.py --rows 20000 --runners default --no-baseline --keep
    .venv/bin/python bench/tokenize_floor.py                 # reads that run's debiased shards

It takes the debiased train shards of a kept ``bench/data_throughput.py`` run (what the tokenize stage reads), renders
each row's prompt and completion as the stage does, keeps the distinct texts (the stage tokenizes each distinct text
once: augmented variants share their completions), and times ``encode_batch_fast`` over them: once in one call, once
split over two threads (the Rust tokenizer releases the GIL). Nothing else is timed: no JSON parsing, no rendering,
no label building, no file writing. Rows/s are printed per tokenized row and per input row of the benchmark set
(each input row becomes ``rows_out / rows_in`` tokenized rows there), beside a target of 20,000 input rows/s
through all five stages. Writes bench/results/tokenize_floor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_INPUT_ROWS_PER_S = 20_000


def main() -> None:
    import orjson

    from r1lib.compat import rust_tokenizer
    from r1lib.data.chat_template import completion_text, render_prompts
    from r1lib.presets import preset
    from tasks.resolve_model import resolve_model
    from tasks.tokenize import _load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="the kept data_throughput run to read")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "tokenize_floor.json"))
    args = parser.parse_args()

    run = ROOT / ".cache" / "data_throughput" / str(args.rows) / "run-default"
    shards = sorted((run / "debias" / "shards").glob("train-????.jsonl"))
    if not shards:
        sys.exit(
            f"no debiased shards under {run}: run bench/data_throughput.py --rows {args.rows} --runners default "
            "--no-baseline --keep first"
        )
    config = preset("tiny")
    tokenizer = _load_tokenizer(resolve_model(config.model, str(ROOT / ".cache")), config.model.trust_remote_code)
    backend = rust_tokenizer(tokenizer)
    rows = [orjson.loads(line) for path in shards for line in path.open("rb")]
    prompts = render_prompts(tokenizer, rows, config.tokenize.system_prompt)
    completions = [completion_text(r.get("reasoning"), r["messages"][-1]["content"], True) for r in rows]
    texts = list(dict.fromkeys(prompts + completions))

    def encode(part: list[str]) -> int:
        return sum(len(e.ids) for e in backend.encode_batch_fast(part, add_special_tokens=False))

    started = time.perf_counter()
    tokens = encode(texts)
    one_call = time.perf_counter() - started
    half = len(texts) // 2
    with ThreadPoolExecutor(2) as pool:
        started = time.perf_counter()
        assert sum(pool.map(encode, [texts[:half], texts[half:]])) == tokens
        two_threads = time.perf_counter() - started

    # rows read from the train files (the test file's rows are not counted as input rows by the benchmark)
    report = json.loads((run / "validate" / "report.json").read_text())
    rows_in = sum(entry["rows"] for entry in report if "/train-" in entry["file"])
    expansion = len(rows) / rows_in
    result = dict(
        machine=f"{platform.node()}: {os.cpu_count()} cores",
        tokenizer=type(tokenizer).__name__,
        tokenized_rows=len(rows),
        input_rows=rows_in,
        rows_per_input_row=round(expansion, 2),
        distinct_texts=len(texts),
        tokens_encoded=tokens,
        one_call=dict(
            seconds=round(one_call, 2),
            tokens_per_s=round(tokens / one_call),
            tokenized_rows_per_s=round(len(rows) / one_call),
        ),
        two_threads=dict(
            seconds=round(two_threads, 2),
            tokens_per_s=round(tokens / two_threads),
            tokenized_rows_per_s=round(len(rows) / two_threads),
        ),
        target_input_rows_per_s=TARGET_INPUT_ROWS_PER_S,
        note=__doc__.strip(),
    )
    for name, seconds in (("one_call", one_call), ("two_threads", two_threads)):
        result[name]["input_rows_per_s"] = round(rows_in / seconds)
    result["floor_over_target"] = round(rows_in / two_threads / TARGET_INPUT_ROWS_PER_S, 3)
    print(f"{len(rows):,} tokenized rows ({rows_in:,} input rows), {len(texts):,} distinct texts, {tokens:,} tokens")
    for name in ("one_call", "two_threads"):
        r = result[name]
        print(
            f"  {name:11} {r['seconds']:6.2f} s  {r['tokens_per_s'] / 1e6:5.2f} M tokens/s  "
            f"{r['tokenized_rows_per_s']:>8,} tokenized rows/s  {r['input_rows_per_s']:>7,} input rows/s"
        )
    print(
        f"  the Rust BPE alone, on both cores, reaches {result['floor_over_target']:.2f}x the target of "
        f"{TARGET_INPUT_ROWS_PER_S:,} input rows/s that all five stages together must reach"
    )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
