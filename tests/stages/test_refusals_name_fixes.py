"""Every refusal docs/data-stages.md lists has a test here that reads its message and finds what to change: the setting
or mapping that lifts it, or, for a row that is broken in itself (bad bytes, broken JSON, an empty field), where in
the row (file and line, then the field, column or byte). The refusals are read from the document itself, so a new
one written there without a case in ``ROW_REFUSALS`` or ``STAGE_REFUSALS`` fails
``test_every_documented_refusal_has_a_test``.
"""

import json
import re

import pytest
from conftest import r1

from r1lib.config import DataConfig, DebiasConfig, DedupConfig, TokenizeConfig
from r1lib.data.records import make_record
from r1lib.data.row_formats import normalize
from r1lib.data.row_rules import RowRules
from r1lib.data.shards import Shard
from r1lib.errors import DataValidationError
from r1lib.io import write_jsonl
from tasks.debias import debias_file
from tasks.dedup import dedup_files
from tasks.tokenize import tokenize_file
from tasks.validate import validate, validate_file
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "data-stages.md").read_text(encoding="utf-8")


def _without_asides(text: str) -> str:
    """The text less ``code`` spans and (parenthetical asides), nested ones too."""
    text = re.sub(r"``[^`]*``", "", text)
    while re.search(r"\([^()]*\)", text):
        text = re.sub(r"\([^()]*\)", "", text)
    return text


def documented_row_refusals() -> set[str]:
    """The validate stage's reason codes: the list after "Checks, each with a stable reason code" and its bullets."""
    checks = DOC.split("Checks, each with a stable reason code", 1)[1].split("Token length against", 1)[0]
    listed, bullets = _without_asides(checks.split(":", 1)[1]).split("and the shapes", 1)
    codes = {item.split()[0] for item in listed.split(",") if item.split()}
    return codes | set(re.findall(r"^- ([a-z_]+)", bullets, re.MULTILINE))


def documented_stage_refusals() -> set[str]:
    """The other stages' reasons and every stage's limit, from the table "Where rows are removed"."""
    section = DOC.split("## Where rows are removed", 1)[1].split("\n## ", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|"))
    found = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("stage", "validate") or set(cells[0]) <= {"-"}:
            continue
        found |= {r.strip() for r in _without_asides(cells[1]).split(",") if r.strip()}
        found |= {cells[0].split()[0] + ":limit"}
    validate_limit = next(line for line in table.splitlines() if line.startswith("| validate"))
    found |= {"validate:limit"} if "data.max_rejected_fraction" in validate_limit else set()
    return found


def J(row) -> str:
    return json.dumps(row, ensure_ascii=False)


def U(content) -> dict:
    return {"role": "user", "content": content}


def A(content, **more) -> dict:
    return {"role": "assistant", "content": content, **more}


TOOL = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {}}}
# reason: (file suffix, the file's text, validate_file options, what the message must name besides the location)
ROW_REFUSALS = {
    "line_too_long": ("jsonl", J({"instruction": "x" * 200, "output": "y"}), {"max_line_bytes": 64},
                      ["data.max_line_bytes"]),
    "invalid_utf8": ("jsonl", b'{"instruction": "\xff", "output": "y"}', {}, ["UTF-8", "at byte 17"]),
    "invalid_json": ("jsonl", '{"instruction": "x", ', {}, ["not valid JSON", "column 22"]),
    "duplicate_key": ("jsonl", '{"instruction": "a", "instruction": "b", "output": "c"}', {},
                      ["key 'instruction' appears twice", "keep one"]),
    "invalid_csv": ("csv", "instruction,output\na,b,c", {}, ["3 cells, the header has 2"]),
    "csv_desync": ("csv", 'instruction,output\nq1,a1\nq2,"never closed\nq3,a3', {},
                   ["line 3, column 4", "fix the quote"]),
    "not_an_object": ("jsonl", "42", {}, ["not an object"]),
    "unknown_format": ("jsonl", J({"Q": "a?", "A": "b"}), {}, ["data.columns=", '"prompt": "Q", "answer": "A"']),
    "missing_field": ("jsonl", J({"instruction": "Suggest.", "instances": [{"input": "", "output": "Oats."}]}), {},
                      ["'output' is missing", "instances", "data.columns"]),
    "wrong_type": ("jsonl", J({"instruction": 5, "output": "x"}), {}, ["'instruction' must be a string"]),
    "empty_field": ("jsonl", J({"instruction": "", "output": "x"}), {}, ["'instruction' is empty"]),
    "control_character": ("jsonl", J({"instruction": "a\u0000b", "output": "x"}), {},
                          ["'instruction' holds a control"]),
    "field_too_long": ("jsonl", J({"instruction": "x" * 50, "output": "y"}), {"max_chars": 20},
                       ["'instruction'", "data.max_field_chars"]),
    "unknown_role": ("jsonl", J({"conversations": [{"from": "human", "value": "W?"},
                                                   {"from": "function_call", "value": "{}"},
                                                   {"from": "gpt", "value": "S."}]}), {},
                     ["conversations[1]", "'function_call'", "data.tools"]),
    "role_order": ("jsonl", J({"messages": [A("hi"), U("q")]}), {}, ["['assistant', 'user']", "no answer to train"]),
    "unsupported_content": ("jsonl", J({"messages": [U([{"type": "image_url", "image_url": {"url": "x"}}]), A("a")]}),
                            {}, ["messages[0].content[0]", "'image_url' part"]),
    "conflicting_system": ("jsonl", J({"system": "S1", "messages": [{"role": "system", "content": "S2"}, U("q"),
                                                                     A("a")]}), {},
                           ["field 'system'", "messages[0]"]),
    "conflicting_reasoning": ("jsonl", J({"messages": [U("q"), A("<think>r1</think>a", reasoning_content="r2")]}), {},
                              ["'messages[-1]'", "reasoning"]),
    "unclosed_think": ("jsonl", J({"instruction": "q", "output": "<think> abc"}), {}, ["'output'", "<think>"]),
    "empty_reasoning": ("jsonl", J({"instruction": "q", "output": "<think>\n\n</think>\n\nx"}), {},
                        ["'output' has an empty <think>"]),
    "empty_answer": ("jsonl", J({"instruction": "q", "output": "<think>abc</think>"}), {}, ["'output' has no answer"]),
    "preference_data": ("jsonl", J({"prompt": "q", "chosen": "a", "rejected": "b"}), {}, ["train.method"]),
    "ambiguous_preference": ("jsonl", J({"prompt": "q", "chosen": "a", "rejected": "b", "label": True}),
                             {"method": "dpo"}, ["field 'label'", "train.method=dpo", "train.method=kto"]),
    "equal_sides": ("jsonl", J({"prompt": "q", "chosen": "a\u200b", "rejected": " a"}), {"method": "dpo"},
                    ["'rejected'", "same answer", "the worse answer or leave the row out"]),
    "placeholder": ("jsonl", J({"instruction": "Who are you?", "output": "I am {{name}}."}), {},
                    ["data.placeholders=", '"name"']),
    "tools": ("jsonl", J({"messages": [U("q"), A("a")], "tools": [TOOL]}), {"tools": "refuse"},
              ["data.tools=system"]),
    "untrained_answer": ("jsonl", J({"messages": [U("q"), A("a", loss=False)]}), {},
                         ["last turn of 'messages'", "loss false"]),
    "pretraining_text": ("jsonl", J({"text": "Some corpus text."}), {}, ["model.embedded.corpus_path", "data.columns"]),
}  # fmt: skip
# ``schema`` is the record model's own check of what normalize produced: no input row reaches it (normalize refuses
# first), so its test builds a broken record (tests/lib/data/test_data_formats.py); here it names the failed check.
NOT_FROM_A_ROW = {"schema"}


def test_every_documented_refusal_has_a_test():
    rows, stages = documented_row_refusals(), documented_stage_refusals()
    assert len(rows) > 20 and {"unknown_format", "preference_data", "csv_desync"} <= rows  # the parse found the list
    assert rows - NOT_FROM_A_ROW == set(ROW_REFUSALS), "a refusal in docs/data-stages.md needs its row here"
    assert stages == set(STAGE_REFUSALS), "a stage refusal in docs/data-stages.md needs its case here"


@pytest.mark.parametrize("reason", sorted(ROW_REFUSALS))
def test_a_refused_row_says_where_and_what_to_change(reason, tmp_path):
    suffix, text, options, names = ROW_REFUSALS[reason]
    path = tmp_path / f"rows.{suffix}"
    path.write_bytes(text if isinstance(text, bytes) else (text + "\n").encode())
    method = options.get("method")  # a preference run's refusals (train.method dpo: pairs accepted, then checked)
    rules = RowRules(
        tools=options.get("tools", "system"), preference_method=method, preference_kinds=("pair",) * bool(method)
    )
    _, quarantined, _ = validate_file(
        path, options.get("max_chars", 100_000), options.get("max_line_bytes", 64 * 2**20), rules
    )
    assert [q["reason"] for q in quarantined][:1] == [reason]
    message = quarantined[0]["message"]
    where = f"{path} row " if suffix == "csv" else f"{path}:1:"
    assert message.startswith(where), message
    missing = [name for name in names if name not in message]
    assert not missing, f"{reason}: {message!r} does not name {missing}"


# --- the stages' refusals: every reason removed past a limit, and each limit -----------------------------------------


def rec(prompt: str, answer: str, line: int) -> dict:
    return make_record(normalize({"instruction": prompt, "output": answer}), "rows.jsonl", line)


def refuse_validate(tmp_path, tokenizer) -> str:
    rows = [J({"instruction": "q", "output": "a"}), J({"Q": "a"}), J({"Q": "b"})]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = DataConfig(train_paths=[str(tmp_path / "rows.jsonl")], test_path="", replay_path=None,
                     allowed_roots=[str(tmp_path)])  # fmt: skip
    with pytest.raises(DataValidationError) as info:
        validate(cfg, tmp_path / "out")
    return str(info.value)


def refuse_dedup(rows: list[dict], tmp_path, test: list[dict] = ()) -> str:
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "test.jsonl", list(test))
    shards = [Shard.of(tmp_path / "train.jsonl")], [Shard.of(tmp_path / "test.jsonl")] if test else []
    with pytest.raises(DataValidationError) as info:
        dedup_files(*shards, DedupConfig(), tmp_path / "out")
    return str(info.value)


def refuse_duplicate(tmp_path, tokenizer) -> str:
    return refuse_dedup([rec("What is 2 + 2?", "4", n) for n in range(1, 5)], tmp_path)


def refuse_near_duplicate(tmp_path, tokenizer) -> str:
    text = "Name the largest planet of the solar system and say why it is so large in one short sentence please"
    return refuse_dedup([rec(text + "!" * n, "Jupiter.", n) for n in range(1, 5)], tmp_path)


def refuse_test_leak(tmp_path, tokenizer) -> str:
    rows = [rec(f"What is {n} + {n}?", str(2 * n), n) for n in range(1, 5)]
    return refuse_dedup(rows, tmp_path, test=rows[:3])


def refuse_contradictory_pair(tmp_path, tokenizer) -> str:
    from r1lib.data.preference import normalize_preference, preference_record

    rows = [{"prompt": "Which is right?", "chosen": a, "rejected": b} for a, b in (("Yes.", "No."), ("No.", "Yes."))]
    records = [preference_record(normalize_preference(r), "rows.jsonl", n) for n, r in enumerate(rows, 1)]
    return refuse_dedup(records + [rec("What is 2 + 2?", "4", 3)], tmp_path)


def refuse_blocked_term(tmp_path, tokenizer) -> str:
    write_jsonl(tmp_path / "in.jsonl", [rec("You idiot, 1 + 1?", "2", 1), rec("2 + 2?", "4", 2)])
    with pytest.raises(DataValidationError) as info:
        debias_file(tmp_path / "in.jsonl", DebiasConfig(), tmp_path / "out")
    return str(info.value)


def refuse_too_long(tmp_path, tokenizer) -> str:
    write_jsonl(tmp_path / "one.jsonl", [rec("Count.", r1(" ".join(map(str, range(300))), "300"), 1)])
    with pytest.raises(DataValidationError) as info:
        tokenize_file(tokenizer, tmp_path / "one.jsonl", TokenizeConfig(max_seq_length=64), tmp_path / "out")
    return str(info.value)


DEDUP_FIXES = ["dedup.max_removed_fraction", "dedup.threshold", "dedup.leakage"]
# documented refusal: (how to meet it, what its message must name)
STAGE_REFUSALS = {
    "validate:limit": (refuse_validate, ["data.max_rejected_fraction=0.7", "data.columns="]),
    "duplicate": (refuse_duplicate, ["duplicate", *DEDUP_FIXES]),
    "near_duplicate": (refuse_near_duplicate, ["near_duplicate", *DEDUP_FIXES]),
    "test_leak": (refuse_test_leak, ["test_leak", *DEDUP_FIXES]),
    "contradictory_pair": (refuse_contradictory_pair, ["contradictory_pair", "keep the direction you mean", "delete"]),
    "dedup:limit": (refuse_duplicate, ["dedup.max_removed_fraction=0.5"]),
    "blocked_term": (refuse_blocked_term, ["debias.blocklist_path", "debias.max_blocked_fraction"]),
    "debias:limit": (refuse_blocked_term, ["debias.max_blocked_fraction=0.1"]),
    "too_long": (refuse_too_long, ["tokenize.max_seq_length=", "tokenize.truncation=truncate"]),
    "tokenize:limit": (refuse_too_long, ["tokenize.max_dropped_fraction=0.1"]),
}


@pytest.mark.parametrize("refusal", sorted(STAGE_REFUSALS))
def test_a_stage_refusal_names_the_settings_that_lift_it(refusal, tmp_path, tokenizer):
    meet, names = STAGE_REFUSALS[refusal]
    message = meet(tmp_path, tokenizer)
    missing = [name for name in names if name not in message]
    assert not missing, f"{refusal}: {message!r} does not name {missing}"
