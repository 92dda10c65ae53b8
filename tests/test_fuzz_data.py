"""Hostile data files: every line ends accepted or quarantined with a reason; none is lost, nothing crashes."""

import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.validate import validate_file

STATS = {"files": 0, "rows": 0, "quarantined": 0, "lost": 0}

GOOD = {"instruction": "What is the sentence about?", "output": "<think>\nTwo animals.\n</think>\n\nAnimals."}


def mutate(rng: random.Random, line: bytes) -> bytes:
    kind = rng.randrange(9)
    if kind == 0:
        return line[: rng.randrange(len(line))]                     # truncated JSON
    if kind == 1:
        return line.decode().encode("utf-16")                       # wrong encoding
    if kind == 2:
        return json.dumps({**GOOD, "output": "x" * 200_000}).encode()  # huge field
    if kind == 3:
        nested = "x"
        for _ in range(rng.choice([50, 5000])):
            nested = [nested]
        try:
            return json.dumps({"instruction": nested, "output": "y"}).encode()  # deeply nested
        except RecursionError:
            return b'{"instruction": ' + b"[" * 5000 + b"]" * 5000 + b', "output": "y"}'
    if kind == 4:
        return line.replace(b"What", b"Wh\\u0000at")                  # NUL inside a string
    if kind == 5:
        return line[:10] + b"\x00\xff\xfe" + line[10:]               # raw NUL and invalid UTF-8 bytes
    if kind == 6:
        return b"\xef\xbb\xbf" + line                                 # a byte-order mark
    if kind == 7:
        return json.dumps(rng.choice([None, 1, "s", [GOOD], {"messages": "no"}])).encode()
    return line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 12), extra=st.lists(st.binary(max_size=60), max_size=4))
def test_mutated_files_lose_no_row(tmp_path_factory, seed, n, extra):
    rng = random.Random(seed)
    good = json.dumps(GOOD).encode()
    lines = [mutate(rng, good) for _ in range(n)] + [b.replace(b"\n", b" ") for b in extra]
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    non_blank = sum(1 for line in path.read_bytes().split(b"\n") if line.strip())
    accepted, quarantined, report = validate_file(path, 100_000)
    STATS["files"] += 1
    STATS["rows"] += non_blank
    STATS["quarantined"] += len(quarantined)
    STATS["lost"] += non_blank - len(accepted) - len(quarantined)
    assert len(accepted) + len(quarantined) == non_blank
    assert all(q["reason"] and q["line"] >= 1 for q in quarantined)


def test_fuzz_summary():
    print(f"data fuzz: {STATS}")
    assert STATS["lost"] == 0
