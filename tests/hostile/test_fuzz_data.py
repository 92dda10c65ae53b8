"""Hostile data files: every line ends accepted or quarantined with a reason; none is lost, nothing crashes."""

import hashlib
import json
import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1lib.errors import DataValidationError
from tasks.validate import validate_file

STATS = {"files": 0, "rows": 0, "quarantined": 0, "line_too_long": 0, "lost": 0, "refused_files": 0}
WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")
MAX_LINE_BYTES = 300_000  # small, so that over-long lines stay cheap to generate

GOOD = {"instruction": "What is the sentence about?", "output": "<think>\nTwo animals.\n</think>\n\nAnimals."}


def mutate(rng: random.Random, line: bytes) -> bytes:
    kind = rng.randrange(10)
    if kind == 0:
        return line[: rng.randrange(len(line))]  # truncated JSON
    if kind == 1:
        return line.decode().encode("utf-16")  # wrong encoding
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
        return line.replace(b"What", b"Wh\\u0000at")  # NUL inside a string
    if kind == 5:
        return line[:10] + b"\x00\xff\xfe" + line[10:]  # raw NUL and invalid UTF-8 bytes
    if kind == 6:
        return b"\xef\xbb\xbf" + line  # a byte-order mark
    if kind == 7:
        return json.dumps(rng.choice([None, 1, "s", [GOOD], {"messages": "no"}])).encode()
    if kind == 8:
        return json.dumps(
            {**GOOD, "output": "z" * rng.randrange(MAX_LINE_BYTES, 3 * MAX_LINE_BYTES)}
        ).encode()  # too long
    return line


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), n=st.integers(1, 12), extra=st.lists(st.binary(max_size=60), max_size=4))
def test_mutated_files_lose_no_row(tmp_path_factory, seed, n, extra):
    rng = random.Random(seed)
    good = json.dumps(GOOD).encode()
    lines = [mutate(rng, good) for _ in range(n)] + [b.replace(b"\n", b" ") for b in extra]
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    content = path.read_bytes()
    non_blank = sum(1 for line in content.split(b"\n") if line.strip())
    try:
        accepted, quarantined, report = validate_file(path, 100_000, max_line_bytes=MAX_LINE_BYTES)
    except DataValidationError as exc:  # a file declared UTF-16/32 by its first bytes is refused whole, by name
        assert "not UTF-8" in str(exc) and "re-save it as UTF-8" in str(exc), str(exc)
        assert content.startswith(WIDE_BOMS) or content[:4096].count(0) * 3 >= len(content[:4096])
        STATS["refused_files"] += 1
        return
    too_long = [q for q in quarantined if q["reason"] == "line_too_long"]
    STATS["files"] += 1
    STATS["rows"] += non_blank
    STATS["quarantined"] += len(quarantined)
    STATS["line_too_long"] += len(too_long)
    STATS["lost"] += non_blank - len(accepted) - len(quarantined)
    assert len(accepted) + len(quarantined) == non_blank
    assert all(q["reason"] and q["line"] >= 1 for q in quarantined)
    assert len(too_long) == sum(len(line) > MAX_LINE_BYTES for line in lines)
    for q in too_long:  # identified by its hash and place, not kept
        line = lines[q["line"] - 1]
        assert (q["bytes"], q["sha256"]) == (len(line), hashlib.sha256(line).hexdigest()) and len(q["raw"]) < 1000


def test_fuzz_summary():
    print(f"data fuzz: {STATS}")
    assert STATS["lost"] == 0
