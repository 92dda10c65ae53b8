import pytest

from r1lib.config import TokenizeConfig
from r1lib.data.chat_template import THINK_CLOSE
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from r1lib.errors import DataValidationError
from tasks.tokenize import IGNORE, decoded_example, tokenize_records


def record(instruction="Who wrote it?", output="<think>\nThe note says Ann.\n</think>\n\nAnn.", **extra):
    return make_record(normalize({"instruction": instruction, "output": output, **extra}), "mem.jsonl", 1)


def test_exactly_one_bos_and_prompt_masked(tokenizer):
    rows, quarantined, audit = tokenize_records(tokenizer, [record()], TokenizeConfig())
    ids, labels = rows[0]["input_ids"], rows[0]["labels"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    example = decoded_example(tokenizer, rows[0])
    assert example["prompt"] == "<｜begin▁of▁sentence｜><｜User｜>Who wrote it?<｜Assistant｜><think>\n"
    assert example["trained"] == "The note says Ann.\n</think>\n\nAnn.<｜end▁of▁sentence｜>"
    first_trained = labels.index(next(t for t in labels if t != IGNORE))
    assert all(t == IGNORE for t in labels[:first_trained])
    assert labels[first_trained:] == ids[first_trained:]
    assert audit == {"truncated": 0, "bos_ok": 1, "think_in_labels": 1, "eos_at_end": 1} and not quarantined


def test_prompt_matches_the_official_generation_prompt(tokenizer):
    rows, _, _ = tokenize_records(tokenizer, [record()], TokenizeConfig())
    generation_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who wrote it?"}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(generation_prompt, add_special_tokens=False)["input_ids"]
    assert rows[0]["input_ids"][: len(prompt_ids)] == prompt_ids  # training sees exactly what inference sends


def test_think_policy_mask_keeps_reasoning_out_of_the_loss(tokenizer):
    rows, _, audit = tokenize_records(tokenizer, [record()], TokenizeConfig(think_in_loss="mask"))
    trained = tokenizer.decode([t for t in rows[0]["labels"] if t != IGNORE])
    assert trained == "</think>\n\nAnn.<｜end▁of▁sentence｜>"
    assert "The note says Ann." in tokenizer.decode(rows[0]["input_ids"])


def test_think_policy_drop_removes_reasoning(tokenizer):
    rows, _, _ = tokenize_records(tokenizer, [record()], TokenizeConfig(think_in_loss="drop"))
    assert "note says" not in tokenizer.decode(rows[0]["input_ids"])
    assert tokenizer.decode([t for t in rows[0]["labels"] if t != IGNORE]).startswith(THINK_CLOSE)


def test_system_prompt_and_multi_turn(tokenizer):
    rec = make_record(
        normalize(
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "<think>\nx\n</think>\n\nb"},
                    {"role": "user", "content": "c"},
                    {"role": "assistant", "content": "<think>\ny\n</think>\n\nd"},
                ]
            }
        ),
        "m.jsonl",
        1,
    )
    rows, _, _ = tokenize_records(tokenizer, [rec], TokenizeConfig())
    example = decoded_example(tokenizer, rows[0])
    # Earlier answers appear without their reasoning, as the R1 template shows them; only the last turn is trained.
    assert example["prompt"] == (
        "<｜begin▁of▁sentence｜>Be brief.<｜User｜>a<｜Assistant｜>b<｜end▁of▁sentence｜>"
        "<｜User｜>c<｜Assistant｜><think>\n"
    )
    assert example["trained"] == "y\n</think>\n\nd<｜end▁of▁sentence｜>"


@pytest.mark.parametrize(("policy", "kept", "quarantined", "truncated"), [("drop", 1, 1, 0), ("truncate", 2, 0, 1)])
def test_length_policy(tokenizer, policy, kept, quarantined, truncated):
    long = record(output="<think>\n" + "word " * 200 + "\n</think>\n\nok")
    rows, rejected, audit = tokenize_records(
        tokenizer, [record(), long], TokenizeConfig(max_seq_length=64, truncation=policy)
    )
    assert (len(rows), len(rejected), audit["truncated"]) == (kept, quarantined, truncated)
    assert all(len(r["input_ids"]) <= 64 for r in rows)
    if rejected:
        assert rejected[0]["reason"] == "too_long" and "mem.jsonl:1" in rejected[0]["message"]


def test_length_policy_fail_names_the_row(tokenizer):
    long = record(output="<think>\n" + "word " * 200 + "\n</think>\n\nok")
    with pytest.raises(DataValidationError, match=r"mem.jsonl:1: \d+ tokens exceed tokenize.max_seq_length=64"):
        tokenize_records(tokenizer, [long], TokenizeConfig(max_seq_length=64, truncation="fail"))


def test_template_without_generation_think_prefix(tokenizer):
    """Older R1 templates end the generation prompt at <｜Assistant｜>: the completion then opens <think> itself."""
    import copy

    tok = copy.deepcopy(tokenizer)  # keep the session fixture untouched
    tok.chat_template = tokenizer.chat_template.replace("<｜Assistant｜><think>\\n", "<｜Assistant｜>")
    rows, _, _ = tokenize_records(tok, [record()], TokenizeConfig())
    assert decoded_example(tok, rows[0])["prompt"].endswith("<｜Assistant｜>")
    assert decoded_example(tok, rows[0])["trained"].startswith("<think>\nThe note says Ann.")


# --- encode_batch: equal to encode_row, row for row ----------------------------------------------------------------

import random  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from r1lib.data.chat_render import chat_renderer  # noqa: E402
from r1lib.data.chat_template import (  # noqa: E402
    ASSISTANT,
    BOS,
    EOS,
    R1_CHAT_TEMPLATE,
    THINK_OPEN,
    USER,
    render_prompt,
    render_prompts,
)
from tasks.tokenize import IdsCache, encode_batch, encode_row, encode_texts  # noqa: E402

POLICIES = [
    TokenizeConfig(),
    TokenizeConfig(think_in_loss="mask"),
    TokenizeConfig(think_in_loss="drop"),
    TokenizeConfig(system_prompt="You are a careful tutor."),
]


@contextmanager
def unchecked(tokenizer):
    """The tokenizer's renderer with the Jinja spot checks off: what it fills is returned as is, so a test sees the
    fast path itself (not the check repairing it)."""
    renderer = chat_renderer(tokenizer, add_generation_prompt=True)
    saved = renderer.verify_first, renderer.verify_rate
    renderer.verify_first, renderer.verify_rate = 0, 0.0
    try:
        yield renderer
    finally:
        renderer.verify_first, renderer.verify_rate = saved


@contextmanager
def template(tokenizer, text: str):
    saved = tokenizer.chat_template
    tokenizer.chat_template = text
    try:
        yield
    finally:
        tokenizer.chat_template = saved


def assert_same(tokenizer, records, cfg):
    expected = [encode_row(tokenizer, r, cfg) for r in records]
    got = encode_batch(tokenizer, records, cfg)
    assert len(got) == len(expected)
    for record, a, b in zip(records, got, expected):
        assert a == b, record


def sample_records() -> list[dict]:
    from r1lib.config import AugmentConfig
    from tasks.augment import expand, load_templates
    from tasks.validate import validate_file

    records = [
        r for name in ("train", "test", "general") for r in validate_file(f"data/sample/{name}.jsonl", 100_000)[0]
    ]
    cfg = AugmentConfig(prompt_variants=1, text_variants=["whitespace", "punctuation", "question_first"])
    return expand(records, cfg, load_templates(Path(cfg.templates_path)), random.Random(0))


@pytest.mark.parametrize("cfg", POLICIES, ids=["keep", "mask", "drop", "system_prompt"])
def test_encode_batch_equals_encode_row_on_sample_data(tokenizer, cfg):
    records = sample_records()
    assert len(records) > 2500
    with unchecked(tokenizer) as renderer:
        before = dict(renderer.stats)
        assert_same(tokenizer, records, cfg)
        assert renderer.stats["filled"] - before["filled"] == len(records)  # all filled: the fast path was tested


def multi_turn(earlier_answer: str, system: str = "", last_user: str = "c", reasoning: str | None = "y") -> dict:
    return {
        "system": system,
        "reasoning": reasoning,
        "source": {"file": "m.jsonl", "line": 1},
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": earlier_answer},
            {"role": "user", "content": last_user},
            {"role": "assistant", "content": "d"},
        ],
    }


def test_multi_turn_history_with_think_renders_like_jinja(tokenizer):
    """R1's template keeps only what follows '</think>' in earlier assistant turns: such rows must not be filled
    with the untouched content. The same shape without '</think>' is still filled."""
    records = [
        multi_turn("b"),
        multi_turn("<think>\nr\n</think>\n\nb"),
        multi_turn("x </think> b", system="Be brief."),
        multi_turn("only </think>"),
        multi_turn("中文 </think>\n答案", last_user="请回答。"),
        multi_turn("no think", system="系统提示", reasoning=None),
    ]
    records.append(
        make_record(
            normalize(
                {
                    "messages": [
                        {"role": "user", "content": "a"},
                        {"role": "assistant", "content": "earlier </think> kept by normalize"},
                        {"role": "user", "content": "c"},
                        {"role": "assistant", "content": "<think>\ny\n</think>\n\nd"},
                    ]
                }
            ),
            "m.jsonl",
            2,
        )
    )
    with unchecked(tokenizer) as renderer:
        for cfg in POLICIES:
            before = dict(renderer.stats)
            assert_same(tokenizer, records, cfg)
            assert renderer.stats["jinja"] - before["jinja"] == 5  # the rows whose history holds '</think>'
            assert renderer.stats["filled"] - before["filled"] == 2
    prompt = render_prompts(tokenizer, [records[1]])[0]
    assert prompt == render_prompt(tokenizer, records[1]) and "r\n</think>" not in prompt


def test_system_prompts_and_chinese(tokenizer):
    records = [
        record(instruction="小明有3个苹果，又买了2个。他现在有几个？", output="<think>\n3加2等于5。\n</think>\n\n5个"),
        record(system="你是一位老师。"),
        record(system="Answer in one word.", instruction="  spaced  \n"),
        record(instruction="e\u0301 composed? ｜full width｜ 😀"),
    ]
    with unchecked(tokenizer):
        for cfg in [*POLICIES, TokenizeConfig(system_prompt="请简短回答。", think_in_loss="mask")]:
            assert_same(tokenizer, records, cfg)


TRICKY = [
    "{{ bos_token }}",
    "{{",
    "}}",
    "{% if true %}x{% endif %}",
    "{%",
    "%}",
    "{#",
    "#}",
    "%s",
    "%%",
    "%(a)s",
    "{}",
    "{0}",
    "FillDEADBEEF00112233Zq",
    "<FillDEADBEEF00112233Zq:0>",
    "«Fill#1»",
    "Ab'\"\\&é中",
    BOS,
    EOS,
    USER,
    ASSISTANT,
    THINK_OPEN,
    THINK_CLOSE,
    "<|EOT|>",
    "<tool_call>",
    "\n",
    "\r\n",
    " ",
    "\t",
    "中文",
    "e\u0301",
    "😀",
    "\\",
    "'",
    '"',
    "<&>",
    "\u00a0",
    "\u200b",
]
text = st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=8)), max_size=6).map("".join)


@st.composite
def records(draw):
    turns = draw(st.integers(1, 3))
    messages = []
    for _ in range(turns):
        messages += [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(text)}]
    return {
        "system": draw(st.one_of(st.just(""), text)),
        "messages": messages,
        "reasoning": draw(st.one_of(st.none(), text)),
        "source": {"file": "h.jsonl", "line": 1},
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.lists(records(), min_size=1, max_size=6),
    policy=st.sampled_from(["keep", "mask", "drop"]),
    system_prompt=st.one_of(st.just(""), text),
)
def test_encode_batch_equals_encode_row_property(tokenizer, batch, policy, system_prompt):
    cfg = TokenizeConfig(think_in_loss=policy, system_prompt=system_prompt)
    with unchecked(tokenizer):
        assert render_prompts(tokenizer, batch, system_prompt) == [
            render_prompt(tokenizer, r, system_prompt) for r in batch
        ]
        assert_same(tokenizer, batch, cfg)


@given(texts=st.lists(text, max_size=8))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_encode_texts_equals_the_plain_call(tokenizer, texts):
    assert encode_texts(tokenizer, texts) == [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def varied_records() -> list[dict]:
    contents = [
        "plain question",
        "  Edge spaces  ",
        "UPPER and lower",
        "please answer",
        "x </think> y",
        "a" * 80,
        "中文内容",
        "{{ bos_token }} %s",
        "Please, PLEASE",
        "please",
        "42",
    ]
    out = [record(instruction=c) for c in contents] + [record(instruction=c, system="Sys tem ") for c in contents[:3]]
    out += [multi_turn(c, last_user=d) for c, d in zip(contents, reversed(contents))]
    return out


R1_USER = "{{ '<｜User｜>' + message['content'] }}"
TRANSFORMING = {  # a template that changes contents, and what the renderer must notice
    "upper": R1_CHAT_TEMPLATE.replace(R1_USER, "{{ '<｜User｜>' + message['content'] | upper }}"),
    "trim": R1_CHAT_TEMPLATE.replace(R1_USER, "{{ '<｜User｜>' + message['content'] | trim }}"),
    "tojson": R1_CHAT_TEMPLATE.replace(R1_USER, "{{ '<｜User｜>' + message['content'] | tojson }}"),
    "replace": R1_CHAT_TEMPLATE.replace(R1_USER, "{{ '<｜User｜>' + message['content'] | replace('please', 'pls') }}"),
    "slice": R1_CHAT_TEMPLATE.replace(R1_USER, "{{ '<｜User｜>' + message['content'][:40] }}"),
    "truncate": R1_CHAT_TEMPLATE.replace(R1_USER, "{{ '<｜User｜>' + message['content'] | truncate(40) }}"),
    "length": R1_CHAT_TEMPLATE.replace(
        R1_USER, "{{ '<｜User｜>' }}{% if message['content'] | length > 30 %}[long]{% endif %}{{ message['content'] }}"
    ),
    "contains": R1_CHAT_TEMPLATE.replace(
        R1_USER, "{{ '<｜User｜>' }}{% if 'please' in message['content'] %}[polite]{% endif %}{{ message['content'] }}"
    ),
    "title_of_concat": R1_CHAT_TEMPLATE.replace(R1_USER, "{{ ('<｜User｜>' + message['content']).title() }}"),
    "no_bos_strip": "{% for m in messages %}{{ m['role'] | upper }}: {{ m['content'] | trim }}\n{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}",
    # Uses that read a content in C, out of the placeholders' sight: refused from the template's syntax.
    # (Without that rule the first two give wrong rows; the recorder sees the last two through __repr__/__rmod__.)
    "in_constant": R1_CHAT_TEMPLATE.replace(
        R1_USER,
        "{{ '<｜User｜>' }}{% if message['content'] in 'please answer' %}[in]{% endif %}{{ message['content'] }}",
    ),
    "constant_method": R1_CHAT_TEMPLATE.replace(
        R1_USER,
        "{{ '<｜User｜>' }}{% if 'please answer'.startswith(message['content']) %}[p]{% endif %}"
        "{{ message['content'] }}",
    ),
    "int_filter": R1_CHAT_TEMPLATE.replace(
        R1_USER, "{{ '<｜User｜>' + message['content'] }}{{ message['content'] | int }}"
    ),
    "printf_width": R1_CHAT_TEMPLATE.replace(R1_USER, "{{ '<｜User｜>' + '%-30s|' % message['content'] }}"),
}


@pytest.mark.parametrize("name", list(TRANSFORMING))
def test_templates_that_transform_content_render_like_jinja(tokenizer, name):
    """Without any spot check, what the fast path returns for a template that rewrites contents equals Jinja's."""
    rows = varied_records()
    with template(tokenizer, TRANSFORMING[name]), unchecked(tokenizer) as renderer:
        for cfg in POLICIES:
            assert_same(tokenizer, rows, cfg)
        assert renderer.stats["mismatched"] == 0
        if name in ("contains",):  # a recorded test: only rows that answer it differently go through Jinja
            assert renderer.stats["filled"] > 0 and renderer.stats["jinja"] > 0
            assert not renderer.shapes[("user",)].jinja
        else:
            assert renderer.shapes[("user",)].jinja, renderer.shapes[("user",)].reason


def test_spot_check_catches_what_the_recorder_cannot_see(tokenizer):
    """A template whose test hides from the placeholders ('~' builds a plain string, the needle is computed, so
    no constant marks it either) is caught by the Jinja check of a shape's first rows, and the shape falls back."""
    hidden = (
        "{{ bos_token }}{% for m in messages %}{% set x = m['content'] ~ '' %}"
        "{% if ('z' ~ 'z') in x %}[ZZ]{% endif %}{{ '<' ~ m['role'] ~ '>' ~ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    rows = [record(instruction="buzz") if i % 3 == 0 else record(instruction=f"row {i}") for i in range(60)]
    with template(tokenizer, hidden):
        renderer = chat_renderer(tokenizer, add_generation_prompt=True)
        assert_same(tokenizer, rows, TokenizeConfig())
        assert renderer.stats["mismatched"] >= 1 and renderer.shapes[("user",)].jinja
        assert_same(tokenizer, rows, TokenizeConfig())  # later batches go straight to Jinja


def test_templates_with_the_date_or_without_bos_stay_exact(tokenizer):
    dated = "{{ strftime_now('%Y') }}" + R1_CHAT_TEMPLATE
    no_bos = R1_CHAT_TEMPLATE.replace("{{ bos_token }}", "")
    for text_ in (dated, no_bos):
        with template(tokenizer, text_), unchecked(tokenizer):
            assert_same(tokenizer, varied_records(), TokenizeConfig())


def test_tokenize_records_in_chunks_equals_one_row_at_a_time(tokenizer, monkeypatch):
    import tasks.tokenize as tk

    rows = sample_records()[:700] + [record(output="<think>\n" + "word " * 200 + "\n</think>\n\nok")]
    cfg = TokenizeConfig(max_seq_length=128, truncation="truncate")
    whole = tokenize_records(tokenizer, rows, cfg)
    monkeypatch.setattr(tk, "CHUNK_ROWS", 97)
    assert tokenize_records(tokenizer, iter(rows), cfg) == whole
    monkeypatch.setattr(tk, "encode_batch", lambda tok, chunk, c, cache=None: [encode_row(tok, r, c) for r in chunk])
    assert tokenize_records(tokenizer, rows, cfg) == whole  # the previous, one-row-at-a-time stage
    assert whole[2]["truncated"] == 1


@pytest.mark.parametrize("max_ids", [2_000_000, 50])
def test_ids_cache_across_calls(tokenizer, max_ids):
    """Completion ids kept from earlier chunks (or evicted: a 50-id budget) change nothing; a cache is bound to its
    tokenizer."""
    records = sample_records()[:900]
    random.Random(3).shuffle(records)
    for cfg in POLICIES[:3]:
        cache = IdsCache(tokenizer, max_ids=max_ids)
        got = [
            row
            for i in range(0, len(records), 128)
            for row in encode_batch(tokenizer, records[i : i + 128], cfg, cache)
        ]
        assert got == [encode_row(tokenizer, r, cfg) for r in records]
        assert cache.size <= max_ids and cache.size == sum(map(len, cache.ids.values()))
    with pytest.raises(ValueError, match="another tokenizer"):
        encode_batch(tokenizer, records[:1], TokenizeConfig(), IdsCache(object()))


def test_a_cut_that_would_keep_no_scored_token_is_quarantined_as_too_long(tokenizer):
    """think_in_loss=mask, truncation=truncate, reasoning that fills max_seq_length: cut to fit, the row (SFT) or a
    side of the pair (preference) would train nothing; it is quarantined as too_long, counted, naming why. (A pair
    was kept with a side of no scored token: ORPO's log-odds of it were infinite.)"""
    from r1lib.data.preference import normalize_preference, preference_record
    from r1lib.data.preference_tokens import tokenize_pairs

    reasoning = " ".join(f"step {i}." for i in range(120))
    long = record(output=f"<think>\n{reasoning}\n</think>\n\nAnn.")
    cfg = TokenizeConfig(think_in_loss="mask", truncation="truncate", max_seq_length=96)
    rows, quarantined, audit = tokenize_records(tokenizer, [long, record()], cfg)
    assert len(rows) == 1 and audit["truncated"] == 0  # the short row, untouched
    assert [q["reason"] for q in quarantined] == ["too_long"]
    assert "no answer would be left" in quarantined[0]["message"]  # the masked reasoning counts as prompt
    kept, _, _ = tokenize_records(tokenizer, [long], cfg.model_copy(update={"think_in_loss": "keep"}))
    assert len(kept) == 1 and any(label != IGNORE for label in kept[0]["labels"])  # keep scores the reasoning

    side = f"<think>\n{reasoning}\n</think>\n\n"
    row = {"prompt": "Who wrote it?", "chosen": side + "Ann.", "rejected": side + "Bob."}
    pairs, dropped, counts = tokenize_pairs(
        tokenizer, [preference_record(normalize_preference(row), "p.jsonl", 1)], cfg
    )
    assert not pairs and counts == {"too_long": 1} and "no scored token" in dropped[0]["message"]
