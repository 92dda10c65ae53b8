"""Property: whatever rows arrive, validation never crashes, loses no row, and gives every rejection a reason."""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from r1lib.data.readers import wide_encoding
from r1lib.data.records import check_schema
from r1lib.errors import DataValidationError
from r1lib.io import read_jsonl, write_jsonl
from tasks.validate import validate_file

text = st.text(max_size=40)  # any code point, control characters and lone surrogates included
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
roles = st.sampled_from(["user", "assistant", "system", "human", "gpt", "robot", "", "USER"])
turn = st.fixed_dictionaries({"role": roles, "content": text | st.integers()})
sg_turn = st.fixed_dictionaries({"from": roles, "value": text})
answer = text | st.builds(lambda r, a: f"<think>\n{r}\n</think>\n\n{a}", text, text) | st.just("<think>open")
rows = st.one_of(
    json_values,
    st.fixed_dictionaries({"instruction": text | st.integers(), "output": answer}),
    st.fixed_dictionaries({"instruction": text, "input": text, "output": answer}),
    st.fixed_dictionaries({"messages": st.lists(turn, max_size=4)}, optional={"reasoning": text | st.none()}),
    st.fixed_dictionaries({"conversations": st.lists(sg_turn, max_size=4)}),
    st.fixed_dictionaries({"prompt": text, "completion": answer}),
)
# A line is a JSON row (escaped as JSON writes it), raw text (often not JSON), or raw bytes (often not UTF-8).
lines = st.one_of(
    rows.map(lambda r: json.dumps(r).encode()),
    text.map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.binary(max_size=30),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(lines, max_size=12))
@example(raw_lines=[b"\xfe\xff"])  # a UTF-16 BE byte order mark alone: hypothesis found it in a suite run
def test_nothing_crashes_nothing_is_lost_every_rejection_has_a_reason(tmp_path, raw_lines):
    raw_lines = [b.replace(b"\n", b" ").replace(b"\r", b" ") for b in raw_lines]  # one row per line
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"".join(b + b"\n" for b in raw_lines))
    if wide_encoding(path.read_bytes()[:4096]):  # a UTF-16/32 file is refused whole, naming the fix, not row by row
        with pytest.raises(DataValidationError, match=f"^{path}: the file is UTF-(16|32) .*re-save it as UTF-8"):
            validate_file(path, 1000)
        return
    accepted, quarantined, report = validate_file(path, 1000)
    with open(path, "rb") as handle:  # what a line is, as the reader sees it (str.splitlines differs)
        physical = handle.readlines()
    if physical:
        physical[0] = physical[0].removeprefix(b"\xef\xbb\xbf")  # a byte-order mark opening the file is not content
    blank = sum(1 for b in physical if not b.strip())  # ASCII whitespace only; control characters are rows
    assert len(accepted) + len(quarantined) == report.rows == len(physical) - blank
    assert report.blank_lines == blank
    assert sorted([r["source"]["line"] for r in accepted] + [q["line"] for q in quarantined]) == sorted(
        set(range(1, len(physical) + 1)) - {i + 1 for i, b in enumerate(physical) if not b.strip()}
    )
    for q in quarantined:
        assert q["reason"] and q["file"] == str(path) and q["message"].startswith(f"{path}:{q['line']}: ")
    assert sum(report.reasons.values()) == len(quarantined)
    for record in accepted:
        check_schema(record)
    write_jsonl(tmp_path / "accepted.jsonl", accepted)  # everything kept is writable as UTF-8 and reads back equal
    write_jsonl(tmp_path / "quarantine.jsonl", quarantined)
    assert read_jsonl(tmp_path / "accepted.jsonl") == accepted


_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-2, 3)
    | st.text(max_size=18)
    | st.just("x" * 16)
    | st.just({"file": "f", "line": 1})
    | st.just([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "system", "messages", "reasoning", "source", "origin", "parent", "x"]),
        _VALUES,
        max_size=8,
    ),
    st.booleans(),
)
def test_schema_fast_path_never_accepts_what_pydantic_rejects(changes, start_valid):
    """check_schema's plain-Python fast path: whenever it says a record conforms, RecordSchema agrees."""
    from r1lib.data.records import RecordSchema, _conforms, make_record
    from r1lib.data.row_formats import normalize

    valid = make_record(normalize({"instruction": "q", "output": "a"}), "f", 1)
    assert _conforms(valid)
    record = {**(valid if start_valid else {}), **changes}
    if _conforms(record):
        RecordSchema.model_validate(record)  # raises if the fast path was wrong
