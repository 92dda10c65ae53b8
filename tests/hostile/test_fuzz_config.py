"""Hostile configuration: every case ends in a clear pydantic ValidationError naming the field, never a crash later."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from r1lib.config import PipelineConfig
from r1lib.presets import preset

SECTIONS = ["model", "data", "augment", "debias", "tokenize", "train", "evaluate", "export", "smoke"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**12), 10**12) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
STATS = {"cases": 0, "accepted": 0, "refused": 0}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(section=st.sampled_from(SECTIONS), key=st.text(max_size=24), value=json_values, known=st.booleans())
def test_any_override_is_accepted_or_refused_with_the_field_named(section, key, value, known):
    base = preset("tiny").model_dump()
    fields = list(base[section]) if isinstance(base[section], dict) else []
    if known and fields:
        key = fields[hash(key) % len(fields)]
    data = json.loads(json.dumps(base))
    data[section][key] = value
    STATS["cases"] += 1
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        STATS["refused"] += 1
        assert section in str(exc) and str(exc.errors()[0]["loc"][0]) == section
        return
    STATS["accepted"] += 1
    assert PipelineConfig.model_validate(cfg.model_dump()) == cfg  # what is accepted round-trips


def test_out_of_range_values_are_refused():
    for section, field, value in [
        ("train", "learning_rate", 0),
        ("train", "micro_batch_size", 0),
        ("tokenize", "max_seq_length", 1),
        ("data", "max_rejected_fraction", 2),
        ("evaluate", "top_p", 0),
        ("export", "quantizations", ["Q9_Z"]),
    ]:
        data = preset("tiny").model_dump()
        data[section][field] = value
        try:
            PipelineConfig.model_validate(data)
        except ValidationError as exc:
            assert field in str(exc)
        else:
            raise AssertionError(f"{section}.{field}={value!r} was accepted")


def test_report_counts():
    # Runs after the property test in file order; records what the fuzzing covered.
    print(f"config fuzz: {STATS}")
    assert STATS["cases"] == 0 or STATS["refused"] > 0
