"""An R1-like data set of realistic lengths for the rehearsal: prompts of 50-300 tokens, reasoning plus answer of
300-3,000 tokens (log-uniform, so most rows are short and a few are long, as in R1 distillation sets), in English and
Chinese.

The text is built from the shipped English corpus (data/corpus/general.txt) and the public Chinese Alpaca excerpt
(tests/fixtures/public/llamafactory_alpaca_zh_demo.json), interleaved with arithmetic reasoning steps whose random
numbers keep every row distinct (so deduplication keeps them, as it would keep real rows). Sentences with a term of
the debias lists are left out, so the debias stage adds no twins and the row count is what was asked for. Lengths are
measured with the shape's own tokenizer.
"""

from __future__ import annotations

import csv
import json
import math
import random
import re
from pathlib import Path

from r1lib.io import write_jsonl

PROJECT = Path(__file__).resolve().parents[2]
CORPUS = PROJECT / "data" / "corpus" / "general.txt"
CHINESE = PROJECT / "tests" / "fixtures" / "public" / "llamafactory_alpaca_zh_demo.json"
TERM_FILES = (PROJECT / "data" / "debias" / "term_pairs.csv", PROJECT / "data" / "debias" / "blocklist.txt")
NOUNS = ["apples", "boxes", "coins", "books", "stones", "cards", "shells", "pencils", "tickets", "marbles"]
NOUNS_ZH = ["苹果", "盒子", "硬币", "书", "石头", "卡片", "贝壳", "铅笔", "车票", "弹珠"]


def _terms() -> set[str]:
    terms: set[str] = set()
    pairs, blocklist = TERM_FILES
    if pairs.is_file():
        for row in csv.DictReader(pairs.open(encoding="utf-8")):
            terms |= {row["term_a"].lower(), row["term_b"].lower()}
    if blocklist.is_file():
        terms |= {t.strip().lower() for t in blocklist.read_text(encoding="utf-8").splitlines() if t.strip()}
        terms = {t for t in terms if not t.startswith("#")}
    return terms


def sentences() -> tuple[list[str], list[str]]:
    """(English, Chinese) filler sentences without any debias term."""
    terms = _terms()
    english = [s.strip() + "." for s in re.split(r"\.\s+", CORPUS.read_text(encoding="utf-8")) if len(s.split()) > 2]
    english = [s for s in english if not {w.lower().strip(".,?!") for w in s.split()} & terms]
    chinese = []
    for row in json.loads(CHINESE.read_text(encoding="utf-8")):
        chinese += [s + "。" for s in re.split(r"[。\n]+", row["output"]) if len(s) > 6]
    # prose only (the excerpt also holds code), and no debias term
    chinese = [s.strip() for s in chinese if len(re.findall(r"[\u4e00-\u9fff]", s)) > len(s) / 2]
    chinese = [s for s in chinese if not any(t in s for t in terms if not t.isascii())]
    return sorted(set(english)), sorted(set(chinese))


def _step(rng: random.Random, zh: bool, i: int, filler: list[str]) -> str:
    a, b = rng.randint(2, 999), rng.randint(2, 999)
    op, value = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
    if zh:
        noun = rng.choice(NOUNS_ZH)
        return rng.choice(
            [
                f"第{i}步：{a} {op} {b} = {value}。",
                f"所以现在有{value}个{noun}。{rng.choice(filler)}",
                f"等一下，再检查一遍：{a} {op} {b} 是 {value}，没错。",
            ]
        )
    noun = rng.choice(NOUNS)
    return rng.choice(
        [
            f"Step {i}: {a} {op} {b} = {value}.",
            f"So now there are {value} {noun}. {rng.choice(filler)}",
            f"Wait, let me check that again: {a} {op} {b} is {value}, which is right.",
        ]
    )


def _grow(tokenizer, target: int, make) -> str:
    """Pieces from ``make(i)`` joined until they hold about ``target`` tokens (each piece tokenized once)."""
    parts: list[str] = []
    length = 0
    while length < target:
        batch = [make(len(parts) + k + 1) for k in range(max(1, (target - length) // 12))]
        for piece, ids in zip(batch, tokenizer(batch, add_special_tokens=False)["input_ids"]):
            if length >= target:
                break
            parts.append(piece)
            length += len(ids)
    return " ".join(parts)


def r1_rows(
    tokenizer,
    n: int,
    seed: int,
    prompt_tokens: tuple[int, int] = (50, 300),
    completion_tokens: tuple[int, int] = (300, 3000),
    chinese_share: float = 0.3,
) -> list[dict]:
    """``n`` Alpaca-style rows with an inline ``<think>`` block: prompt lengths uniform in ``prompt_tokens``,
    reasoning-plus-answer lengths log-uniform in ``completion_tokens`` (tokens of ``tokenizer``)."""
    rng = random.Random(seed)
    english, chinese = sentences()
    rows = []
    for _ in range(n):
        zh = rng.random() < chinese_share
        filler = chinese if zh else english
        prompt_target = rng.randint(*prompt_tokens)
        low, high = completion_tokens
        completion_target = int(math.exp(rng.uniform(math.log(low), math.log(high))))
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        noun = rng.choice(NOUNS_ZH if zh else NOUNS)
        question = (
            f"一共有{a}个{noun}，又来了{b}个。现在有多少个？"
            if zh
            else f"There are {a} {noun} and {b} more come. How many {noun} are there now?"
        )
        asked = len(tokenizer(question, add_special_tokens=False)["input_ids"])
        context = _grow(tokenizer, max(1, prompt_target - asked), lambda i, pool=filler: rng.choice(pool))
        answer = f"现在一共有{a + b}个{noun}。" if zh else f"There are {a + b} {noun} now."
        told = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 6  # the think tags and blank lines
        reasoning = _grow(
            tokenizer, max(1, completion_target - told), lambda i, zh=zh, pool=filler: _step(rng, zh, i, pool)
        )
        rows.append(
            {
                "instruction": f"{context}\n\n{question}",
                "input": "",
                "output": f"<think>\n{reasoning}\n</think>\n\n{answer}",
            }
        )
    return rows


def write_r1_data(tokenizer, folder: Path, train_rows: int, test_rows: int, seed: int = 0, **lengths) -> dict:
    """Train and test JSONL files under ``folder``; returns their paths and measured token lengths."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, offset in (("train", train_rows, 0), ("test", test_rows, 1)):
        rows = r1_rows(tokenizer, n, seed * 2 + offset, **lengths)
        path = folder / f"r1-{split}.jsonl"
        write_jsonl(path, rows)
        prompt = [len(tokenizer(r["instruction"], add_special_tokens=False)["input_ids"]) for r in rows]
        completion = [len(tokenizer(r["output"], add_special_tokens=False)["input_ids"]) for r in rows]
        out[split] = {
            "path": str(path),
            "rows": n,
            "prompt_tokens": _stats(prompt),
            "completion_tokens": _stats(completion),
        }
    return out


def _stats(values: list[int]) -> dict:
    ordered = sorted(values) or [0]
    return {
        "min": ordered[0],
        "median": ordered[len(ordered) // 2],
        "max": ordered[-1],
        "total": sum(ordered),
    }
