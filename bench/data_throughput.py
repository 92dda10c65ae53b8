"""Data-stage throughput: validate -> dedup -> augment -> debias -> tokenize on N generated mixed-format rows, through
the finetune flow's own data sub-flow (flows/data.py), on Prefect's default task runner and on a local Dask cluster.

    .venv/bin/python bench/data_throughput.py                         # 1,000,000 rows, default runner and Dask
    .venv/bin/python bench/data_throughput.py --rows 100000           # a quicker look
    .venv/bin/python bench/data_throughput.py --runners dask --no-baseline

1. Generates (once, cached under .cache/data_throughput/<rows>/, never committed) a benchmark set of mixed formats
   and lengths: 8 train files (JSON lines, a JSON array, CSV, Parquet; instruction/output with inline <think>, OpenAI
   messages with a reasoning field, Alpaca, ShareGPT with system turns, prompt/completion), English and Chinese rows,
   short arithmetic to long reasoning, with planted broken rows, exact duplicates (also across formats), near
   duplicates, rows that leak the test file, blocklisted words and a gender imbalance. Plus one test file.
2. Runs flows/data.py's sub-flow (the same tasks and code as ``python -m flows.finetune``) once per runner, each into
   a fresh run directory: ``default`` (Prefect's thread pool, ``runner.workers`` threads, one process) and ``dask``
   (a LocalCluster of ``--workers`` processes, one thread each). What every input row becomes is fixed here:
   augment.prompt_variants = 1 and text_variants = [question_first] (so an accepted row becomes up to 3 rows), then
   debias adds a counterfactual twin of every row that mentions a gendered term; the printed ``rows`` line says how
   many tokenized rows came out. No replay file (replay rows would add rows that were not read).
   Rows/s are input rows (rows read from the train files, broken ones included) per second of wall time, per stage
   and in total; CPU seconds and peak RSS are summed over every process of the run (a fresh process per runner, the
   temporary Prefect server it starts, Dask's scheduler, nannies and workers), sampled every 0.2 s.
3. Checks that both runners wrote the same bytes: one sha256 over every file of each run directory.
4. Baseline, in the same run, in its own process: plain ``datasets.Dataset.map(batched=True)`` tokenization (the
   model's chat template through ``apply_chat_template``, HF tokenizer, prompt + completion) of the first
   ``--baseline-rows`` validated train rows, no dedup/augment/debias.

Prints everything and writes bench/results/data_throughput.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

RESULTS = ROOT / "bench" / "results" / "data_throughput.json"


# --- 1. the benchmark set -----------------------------------------------------------------------------------------

NAMES = [
    ("Tom", "he", "his"),
    ("Ann", "she", "her"),
    ("My brother", "he", "his"),
    ("The king", "he", "his"),
    ("His father", "he", "his"),
    ("The boy", "he", "his"),
    ("Mr Lee", "he", "his"),
    ("She", "she", "her"),
    ("He", "he", "his"),
    ("The man", "he", "his"),
    ("A student", "they", "their"),
    ("Maria", "she", "her"),
]
ITEMS = ["apple", "book", "coin", "pencil", "marble", "stamp", "card", "shell", "ticket", "cookie", "sticker", "box"]
ZH_NAMES = [("他", "他"), ("她", "她"), ("小明", "他"), ("小红", "她"), ("老师", "他")]
ZH_ITEMS = ["苹果", "书", "铅笔", "硬币", "邮票"]
WORDS = (
    "the model checks each step and writes down what it knows before it moves on so the final answer follows "
    "from the facts given in the question rather than from a guess about what looks likely here first then "
    "next because therefore since each value sum total count result"
).split()
SYSTEMS = ["You are a careful math tutor.", "Answer briefly.", ""]


def _think(reasoning: str, answer: str) -> str:
    return f"<think>\n{reasoning}\n</think>\n\n{answer}"


def make_row(rng: random.Random) -> dict:
    """A row in a neutral form: system, prompt, reasoning, answer (the file writer picks the format)."""
    kind = rng.random()
    if kind < 0.6:  # short arithmetic, English
        name, pron, poss = rng.choice(NAMES)
        item, a, b = rng.choice(ITEMS), rng.randint(1, 999), rng.randint(1, 999)
        prompt = f"{name} has {a} {item}s and gets {b} more. How many {item}s does {pron} have now?"
        reasoning = f"{name} starts with {a} {item}s. Adding {b} gives {a} + {b} = {a + b}."
        answer = f"{a + b}"
    elif kind < 0.75:  # Chinese
        name, pron = rng.choice(ZH_NAMES)
        item, a, b = rng.choice(ZH_ITEMS), rng.randint(1, 999), rng.randint(1, 999)
        prompt = f"{name}有{a}个{item}，又买了{b}个。{pron}现在有几个{item}？"
        reasoning = f"{a}加{b}等于{a + b}。"
        answer = f"{a + b}个"
    elif kind < 0.96:  # medium: a worded reasoning of 40-120 words
        name, pron, poss = rng.choice(NAMES)
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        prompt = (
            f"{name} packs {a} boxes with {b} cards each and gives away {c} boxes. How many cards are left "
            f"in {poss} boxes?"
        )
        reasoning = " ".join(rng.choices(WORDS, k=rng.randint(40, 120))) + f". ({a} - {c}) x {b} = {(a - c) * b}."
        answer = f"{(a - c) * b} cards."
    else:  # long: 300-900 words of reasoning (some exceed max_seq_length and are dropped by the length policy)
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        prompt = f"Explain step by step how to multiply {a} by {b} and give the product."
        reasoning = " ".join(rng.choices(WORDS, k=rng.randint(300, 900))) + f". {a} x {b} = {a * b}."
        answer = f"{a * b}"
    if rng.random() < 0.0005:
        prompt = "The idiot asked: " + prompt  # blocklisted
    return {
        "system": rng.choice(SYSTEMS) if rng.random() < 0.2 else "",
        "prompt": prompt,
        "reasoning": reasoning,
        "answer": answer,
    }


def to_format(row: dict, fmt: str, rng: random.Random) -> dict:
    s, p, r, a = row["system"], row["prompt"], row["reasoning"], row["answer"]
    if fmt == "instruction_output":
        out = {"instruction": p, "output": _think(r, a)}
        return {**out, "system": s} if s else out
    if fmt == "alpaca":  # the question's first sentence as instruction, the rest as input
        head, _, tail = p.partition(". ")
        return {"instruction": head + ("." if tail else ""), "input": tail, "output": _think(r, a)}
    if fmt == "messages":
        msgs = ([{"role": "system", "content": s}] if s else []) + [
            {"role": "user", "content": p},
            {"role": "assistant", "content": a},
        ]
        return {"messages": msgs, "reasoning_content": r}
    if fmt == "sharegpt":
        conv = ([{"from": "system", "value": s}] if s else []) + [
            {"from": "human", "value": p},
            {"from": "gpt", "value": _think(r, a)},
        ]
        return {"conversations": conv}
    if fmt == "prompt_completion":
        return {"prompt": p, "completion": _think(r, a)}
    raise ValueError(fmt)


FILES = [
    ("train-0.jsonl", "instruction_output"),
    ("train-1.jsonl", "messages"),
    ("train-2.json", "alpaca"),
    ("train-3.parquet", "sharegpt"),
    ("train-4.csv", "prompt_completion"),
    ("train-5.parquet", "alpaca"),
    ("train-6.jsonl", "sharegpt"),
    ("train-7.csv", "instruction_output"),
]
BROKEN = [
    '{"instruction": "cut off',
    '{"instruction": "no output"}',
    '{"instruction": "bell \\u0007", "output": "x"}',
    '{"instruction": "x", "output": "<think>\\nnever closed"}',
    '["not", "an", "object"]',
    '{"instruction": "", "output": "empty prompt"}',
    '{"messages": [{"role": "assistant", "content": "first"}]}',
]


def generate(n: int, out: Path, seed: int = 7) -> dict:
    """Write the benchmark set; returns its manifest (cached: a second call with the same n reads it back)."""
    import pandas as pd

    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        return json.loads(manifest_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    n_test = max(200, n // 200)
    test = [make_row(rng) for _ in range(n_test)]
    per_file = n // len(FILES)
    planted = Counter()
    history: list[dict] = []
    files = []
    for f_index, (name, fmt) in enumerate(FILES):
        rows: list = []
        count = per_file if f_index < len(FILES) - 1 else n - per_file * (len(FILES) - 1)
        for _ in range(count):
            u = rng.random()
            if u < 0.02 and history:  # exact duplicate of an earlier row (possibly of another file and format)
                row, planted["duplicate"] = dict(rng.choice(history)), planted["duplicate"] + 1
            elif u < 0.03 and history:  # near duplicate: an earlier row with an extra sentence
                base = rng.choice(history)
                row = {**base, "prompt": base["prompt"] + " Please be exact."}
                planted["near_duplicate"] += 1
            elif u < 0.0325:  # leaks a test row into train
                row, planted["test_leak"] = dict(rng.choice(test)), planted["test_leak"] + 1
            else:
                row = make_row(rng)
                if len(history) < 50_000:
                    history.append(row)
                elif rng.random() < 0.05:
                    history[rng.randrange(len(history))] = row
            rows.append(to_format(row, fmt, rng))
        path = out / name
        if name.endswith(".jsonl"):
            lines = [json.dumps(r, ensure_ascii=False) for r in rows]
            for k in range(0, len(lines), 331):  # broken rows, every ~331st line
                lines.insert(k, BROKEN[(k // 331) % len(BROKEN)])
                planted["broken"] += 1
            lines.insert(len(lines) // 2, "")
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        elif name.endswith(".json"):
            path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
        else:
            frame = pd.DataFrame(rows)
            if name.endswith(".csv"):
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path, index=False)
        files.append(str(path))
    test_path = out / "test.jsonl"
    test_path.write_text(
        "".join(json.dumps(to_format(r, "instruction_output", rng), ensure_ascii=False) + "\n" for r in test),
        encoding="utf-8",
    )
    manifest = {"rows": n, "files": files, "test": str(test_path), "planted": dict(planted)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


# --- 2. the pipeline, under a meter -------------------------------------------------------------------------------


class Meter:
    """Peak of the summed RSS, and the CPU seconds, of this process and all its descendants, sampled in a thread.
    A process's CPU time is taken from its last sample (the Dask workers live until the cluster closes)."""

    def __init__(self, interval: float = 0.2):
        import psutil

        self.root, self.interval = psutil.Process(), interval
        self.peak_rss = 0
        self.cpu: dict[int, float] = {}
        self.roles: dict[int, str] = {}
        self.proc_rss: dict[int, int] = {}  # peak per process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        rss = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                with proc.oneshot():
                    mine = proc.memory_info().rss
                    rss += mine
                    self.proc_rss[proc.pid] = max(self.proc_rss.get(proc.pid, 0), mine)
                    if proc.pid not in self.roles:
                        self.roles[proc.pid] = role(proc.cmdline(), proc.pid == self.root.pid)
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Meter:
        self._sample()
        self.cpu_start = dict(self.cpu)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def cpu_seconds(self) -> float:
        return sum(v - self.cpu_start.get(pid, 0.0) for pid, v in self.cpu.items())

    def breakdown(self) -> dict[str, dict]:
        """Peak RSS (MiB, summed over processes of a role: their peaks need not coincide) and CPU seconds per role."""
        out: dict[str, dict] = {}
        for pid, name in self.roles.items():
            entry = out.setdefault(name, {"processes": 0, "peak_rss_mib": 0, "cpu_seconds": 0.0})
            entry["processes"] += 1
            entry["peak_rss_mib"] += round(self.proc_rss.get(pid, 0) / 2**20)
            entry["cpu_seconds"] = round(entry["cpu_seconds"] + self.cpu.get(pid, 0) - self.cpu_start.get(pid, 0), 1)
        return out


def role(cmdline: list[str], root: bool) -> str:
    """What a process of the run is, from its command line."""
    text = " ".join(cmdline)
    if root:
        return "bench (flow engine, default-runner threads)"
    if "uvicorn" in text or "prefect" in text and "server" in text:
        return "prefect server"
    if "spawn_main" in text or "multiprocessing" in text:
        return "dask worker or nanny"
    return cmdline[0].rsplit("/", 1)[-1] if cmdline else "?"


def tree_digest(root: Path) -> tuple[str, int, int]:
    """(sha256 over every file's relative path and bytes, files, bytes) of a run directory."""
    digest, files, size = hashlib.sha256(), 0, 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
                size += len(block)
        files += 1
    return digest.hexdigest(), files, size


def bench_config(manifest: dict, kind: str, workers: int, shard_rows: int):
    from r1lib.presets import preset

    config = preset("tiny")
    config.data.train_paths, config.data.test_path, config.data.replay_path = manifest["files"], manifest["test"], None
    config.data.allowed_roots = [str(ROOT / ".cache" / "data_throughput"), "data"]
    config.augment.prompt_variants, config.augment.text_variants = 1, ["question_first"]
    config.tokenize.max_seq_length = 1024
    config.runner.kind, config.runner.workers, config.runner.shard_rows = kind, workers, shard_rows
    return config


def run_pipeline(manifest: dict, kind: str, workers: int, shard_rows: int, model_dir: str, run: Path) -> dict:
    from flows.data import run_data_stages

    shutil.rmtree(run, ignore_errors=True)
    config = bench_config(manifest, kind, workers, shard_rows)
    load = os.getloadavg()
    start = time.perf_counter()
    with Meter() as meter:
        prepared = run_data_stages(config, model_dir, str(run))
    seconds = time.perf_counter() - start
    checksum, files, size = tree_digest(run)
    data = prepared.validated
    train_reports = [r for r in data.reports if r.file in manifest["files"]]
    rows_in = sum(r.rows for r in train_reports)
    assert sum(r.accepted + r.quarantined for r in train_reports) == rows_in
    dedup = prepared.deduped.report.model_dump()
    return {
        "runner": kind,
        "workers": workers,
        "shard_rows": shard_rows,
        "train_shards": len(prepared.deduped.shards["train"]),
        "rows_in": rows_in,
        "seconds": round(seconds, 2),
        "rows_per_s": round(rows_in / seconds),
        "cpu_seconds": round(meter.cpu_seconds, 1),
        "rows_per_cpu_s": round(rows_in / meter.cpu_seconds),
        "stage_seconds": prepared.seconds,
        "stage_rows_per_s": {stage: round(rows_in / s) if s else None for stage, s in prepared.seconds.items()},
        "peak_rss_mib_all_processes": round(meter.peak_rss / 2**20),
        "processes": meter.breakdown(),
        "loadavg_before": [round(x, 2) for x in load],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "checksum": checksum,
        "files": files,
        "bytes": size,
        "validate": {
            "accepted": sum(r.accepted for r in train_reports),
            "quarantined": sum(r.quarantined for r in train_reports),
            "reasons": dict(sum((Counter(r.reasons) for r in train_reports), Counter())),
        },
        "dedup": {"reasons": dedup["reasons"], "train_out": dedup["train_out"], "test_out": dedup["test_out"]},
        "augment": {
            "rows_in": prepared.augmented.rows_in,
            "rows_out": prepared.augmented.rows_out,
            "origins": prepared.augmented.origins,
        },
        "debias": {
            "blocked": prepared.debiased.blocked,
            "counterfactuals": prepared.debiased.counterfactuals,
            "rows_out": prepared.debiased.rows_out,
            "balance": [b.model_dump() for b in prepared.debiased.balance],
        },
        "tokenize": {
            "rows_in": prepared.train.rows_in,
            "rows_out": prepared.train.rows_out,
            "too_long": prepared.train.dropped_too_long,
            "tokens": prepared.train.tokens,
            "trained_tokens": prepared.train.trained_tokens,
        },
        "train_records": prepared.deduped.train,
    }


# --- 3. the baseline ----------------------------------------------------------------------------------------------


def baseline(args: tuple) -> dict:
    """Plain datasets.map(batched=True) tokenization of validated records: chat template + HF tokenizer."""
    import resource

    from datasets import Dataset, disable_caching

    from r1lib.data.chat_template import completion_text
    from r1lib.io import iter_jsonl
    from r1lib.model.loading import load_tokenizer

    disable_caching()
    records_path, model_dir, limit = args
    tokenizer = load_tokenizer(model_dir, trust_remote_code=False)
    rows = []
    for record in iter_jsonl(Path(records_path)):
        rows.append(
            {"system": record["system"], "messages": record["messages"], "reasoning": record["reasoning"] or ""}
        )
        if len(rows) >= limit:
            break
    dataset = Dataset.from_list(rows)
    del rows

    def tok(batch):
        prompts = [
            tokenizer.apply_chat_template(
                ([{"role": "system", "content": s}] if s else []) + m[:-1], add_generation_prompt=True, tokenize=False
            )
            for s, m in zip(batch["system"], batch["messages"])
        ]
        completions = [
            completion_text(r or None, m[-1]["content"], True) for r, m in zip(batch["reasoning"], batch["messages"])
        ]
        p = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        c = tokenizer(completions, add_special_tokens=False)["input_ids"]
        return {"input_ids": [a + b for a, b in zip(p, c)], "labels": [[-100] * len(a) + b for a, b in zip(p, c)]}

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    start, cpu_start = time.perf_counter(), cpu()
    with Meter() as meter:  # sampled: ru_maxrss of a spawned process starts at its parent's peak on Linux
        out = dataset.map(tok, batched=True, batch_size=1000, remove_columns=dataset.column_names)
    seconds, cpu_seconds = time.perf_counter() - start, cpu() - cpu_start
    return {
        "rows": len(out),
        "seconds": round(seconds, 2),
        "rows_per_s": round(len(out) / seconds),
        "cpu_seconds": round(cpu_seconds, 1),
        "rows_per_cpu_s": round(len(out) / cpu_seconds),
        "peak_rss_mib": round(meter.peak_rss / 2**20),
    }


# --- main ---------------------------------------------------------------------------------------------------------


def report(r: dict) -> str:
    stages = ", ".join(f"{k} {v:,}" for k, v in r["stage_rows_per_s"].items())
    return (
        f"{r['runner']:>7}: {r['rows_in']:,} rows in {r['seconds']:.1f} s = {r['rows_per_s']:,} rows/s; "
        f"{r['cpu_seconds']:.0f} CPU-s = {r['rows_per_cpu_s']:,} rows per CPU-second; peak RSS (all processes) "
        f"{r['peak_rss_mib_all_processes']:,} MiB; load {r['loadavg_before'][0]} -> {r['loadavg_after'][0]}\n"
        f"         rows/s per stage: {stages}\n"
        f"         rows: {r['rows_in']:,} read -> {r['validate']['accepted']:,} valid -> "
        f"{r['dedup']['train_out']:,} after dedup -> {r['augment']['rows_out']:,} augmented -> "
        f"{r['debias']['rows_out']:,} debiased -> {r['tokenize']['rows_out']:,} tokenized "
        f"({r['tokenize']['tokens']:,} tokens)\n"
        f"         checksum {r['checksum']} ({r['files']} files, {r['bytes'] / 2**30:.2f} GiB)\n"
        f"         processes: "
        + "; ".join(
            f"{k} x{v['processes']}: {v['peak_rss_mib']:,} MiB, {v['cpu_seconds']} CPU-s"
            for k, v in r["processes"].items()
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runners", default="default,dask", help="comma-separated: default, dask")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (and default-runner threads)")
    parser.add_argument("--shard-rows", type=int, default=None, help="runner.shard_rows (default: the config's)")
    parser.add_argument(
        "--baseline-rows", type=int, default=100_000, help="validated rows the datasets.map baseline tokenizes (0: all)"
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the run directories (GBs at 1M rows)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    from r1lib.config import RunnerConfig
    from r1lib.presets import preset
    from tasks.resolve_model import resolve_model

    data_dir = ROOT / ".cache" / "data_throughput" / str(args.rows)
    t0 = time.perf_counter()
    manifest = generate(args.rows, data_dir)
    print(
        f"benchmark set: {args.rows:,} rows in {len(manifest['files'])} files "
        f"({time.perf_counter() - t0:.1f} s to generate or load); {os.cpu_count()} CPUs, load {os.getloadavg()}"
    )
    model_dir = resolve_model(preset("tiny").model, ".cache")
    shard_rows = args.shard_rows or RunnerConfig().shard_rows
    runs = []
    for kind in args.runners.split(","):
        run = data_dir / f"run-{kind}"
        # Each runner in a fresh process: memory a finished run keeps (Python rarely returns it) must not count
        # against the next one.
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # not daemonic: Dask starts workers
            result = pool.submit(run_pipeline, manifest, kind, args.workers, shard_rows, model_dir, run).result()
        print(report(result), flush=True)
        runs.append(result)
        if kind == args.runners.split(",")[-1] and not args.no_baseline:
            with get_context("spawn").Pool(1) as pool:
                base = pool.apply(baseline, ((result["train_records"], model_dir, args.baseline_rows or 1 << 62),))
            print(
                f"baseline datasets.map(batched=True), chat template + HF tokenizer: {base['rows']:,} validated rows "
                f"in {base['seconds']} s = {base['rows_per_s']:,} rows/s ({base['rows_per_cpu_s']:,} rows per "
                f"CPU-second), peak RSS {base['peak_rss_mib']:,} MiB"
            )
        if not args.keep:
            shutil.rmtree(run, ignore_errors=True)
    same = len({r["checksum"] for r in runs}) == 1
    if len(runs) > 1:
        print(
            f"checksums {'EQUAL' if same else 'DIFFER'}: "
            + ", ".join(f"{r['runner']} {r['checksum'][:16]}" for r in runs)
        )
    result = {
        "runs": runs,
        "same_output": same,
        "generated": manifest["planted"],
        "rows_per_input_row": {
            "augment": "1 original + 1 prompt template + 1 question_first variant when the question can move",
            "debias": "+1 counterfactual twin per row mentioning a gendered term",
        },
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": bench_config(manifest, "default", args.workers, shard_rows).model_dump(
            include={"dedup", "augment", "debias", "tokenize", "runner"}
        ),
        "target": {"rows_per_s": 20_000, "peak_rss_mib": 2048},
    }
    if not args.no_baseline:
        result["baseline_datasets_map"] = base
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
