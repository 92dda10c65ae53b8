"""Real instruction data from public repositories (tests/fixtures/public/, sources in its README.md) goes through the
validate stage unchanged in meaning.

Per file: the detected format, which rows are accepted and which are quarantined (by exact row number and reason),
accepted + quarantined == the rows in the file, and for every accepted row the record's system prompt, user turns,
assistant answers and reasoning equal the source fields' text. The expected values are computed here from the source
JSON alone, not through r1lib/data/row_formats.py, so a change of meaning anywhere in the stage fails the test.

OWN_ROWS, near the end, is a clearly separate block of rows written here (not public) for shapes no public file covers
yet; their expected records and quarantine reasons are written out by hand.
"""

import json
from pathlib import Path

import pandas as pd
import pytest

from r1lib.config import DataConfig
from r1lib.data.row_formats import detect_format
from tasks.validate import validate, validate_file
from tests.conftest import ROOT

PUBLIC = ROOT / "tests" / "fixtures" / "public"

# file -> (the format every row is detected as, {row number: (reason, field)} of the rows expected in quarantine)
FILES = {
    # Alpaca, one JSON array, English then Chinese rows, every "input" empty.
    "llamafactory_identity.json": ("alpaca", {}),
    # Alpaca, one JSON array, Chinese; inputs with newlines, code blocks with significant spaces, quotes.
    "llamafactory_alpaca_zh_demo.json": ("alpaca", {}),
    # ShareGPT (human/gpt), multi-turn, with an extra "id" field.
    "fastchat_dummy_conversation.json": ("sharegpt", {}),
    # ShareGPT with an extra "tools" field; row 3 is a tool-call conversation (function_call/observation turns): the
    # pipeline trains plain chat, so it must be quarantined with a reason, never flattened into user/assistant turns.
    "llamafactory_glaive_toolcall_en_demo.json": ("sharegpt", {3: ("unknown_role", "conversations[1].from")}),
    # OpenAI chat fine-tuning JSONL; row 4 (system + assistant, no user turn) is one of the cookbook's deliberately
    # invalid examples: there is no prompt to train on.
    "openai_cookbook_toy_chat_fine_tuning.jsonl": ("messages", {4: ("role_order", "messages[-1]")}),
    # R1-style OpenAI messages whose content is a list of LLaMA-Factory typed parts ({"type", "value"}): the
    # assistant's reasoning sits in its own "reasoning" part, apart from the answer's "text" part. Rows 1 and 4 are
    # plain chat (system, user, assistant [reasoning, text]). Rows 2 and 3 use tools: reading the turns in order,
    # system first, the first assistant turn (messages[2] = [reasoning, tool_call]) comes before the first "tool" turn
    # (messages[3]), so its tool_call part (content[1]) refuses the row before the tool role is reached.
    "llamafactory_reason_tool_use_demo.jsonl": (
        "messages",
        {
            2: ("unsupported_content", "messages[2].content[1].type"),
            3: ("unsupported_content", "messages[2].content[1].type"),
        },
    ),
}

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


def source_rows(path: Path) -> list[dict]:
    """The rows of a fixture, read with the standard library only."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def text_of(content) -> str:
    """A turn's text: the string itself, or the values of its "text" parts joined with nothing between."""
    if isinstance(content, str):
        return content
    return "".join(part["value"] for part in content if part["type"] == "text")


def reasoning_of(content) -> str | None:
    """The value of a turn's "reasoning" part (LLaMA-Factory's typed parts), None for a plain string turn."""
    if isinstance(content, str):
        return None
    found = [part["value"] for part in content if part["type"] == "reasoning"]
    assert len(found) <= 1
    return found[0] if found else None


def tools_section(tools) -> str:
    """DeepSeek's system-prompt section for a row's tools ('## Tools', then each function's name, description and
    JSON parameters), written out here from the source field."""
    tools = json.loads(tools) if isinstance(tools, str) else tools
    if not tools:
        return ""
    text = "## Tools\nYou have access to the following tools:\n"
    for tool in tools:
        spec = tool.get("function", tool)
        parameters = json.dumps(spec.get("parameters", {}), ensure_ascii=False)
        text += f"\n### {spec['name']}\nDescription: {spec.get('description') or ''}\n\nParameters: {parameters}\n"
    return text.rstrip("\n")


def with_tools(system: str, row: dict) -> str:
    """The system prompt with the row's tools section after it: the tools are kept, never dropped."""
    section = tools_section(row.get("tools"))
    return "\n\n".join(part for part in (system, section) if part)


def expected(row: dict) -> dict:
    """What the record must say, from the source fields alone: system prompt, turns (role, text), reasoning."""
    if "instruction" in row:
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        return {
            "system": row.get("system") or "",
            "reasoning": None,
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}],
        }
    turns, role_key, text_key = (
        (row["conversations"], "from", "value") if "conversations" in row else (row["messages"], "role", "content")
    )
    system = ""
    if turns[0][role_key] == "system":
        system, turns = text_of(turns[0][text_key]), turns[1:]
    return {
        "system": with_tools(system, row),
        "reasoning": reasoning_of(turns[-1][text_key]),
        "messages": [{"role": ROLES[t[role_key]], "content": text_of(t[text_key])} for t in turns],
    }


def body(record: dict) -> dict:
    return {k: record[k] for k in ("system", "messages", "reasoning")}


@pytest.mark.parametrize("name", sorted(FILES))
def test_public_file_goes_through_unchanged_in_meaning(name):
    fmt, rejects = FILES[name]
    path = PUBLIC / name
    rows = source_rows(path)
    assert {detect_format(r) for r in rows} == {fmt}

    accepted, quarantined, report = validate_file(path, max_chars=100_000)

    assert len(accepted) + len(quarantined) == len(rows) == report.rows
    assert {q["line"]: (q["reason"], q["field"]) for q in quarantined} == rejects
    for q in quarantined:  # the raw row is kept whole in the quarantine
        assert json.loads(q["raw"]) == rows[q["line"] - 1]
    assert [r["source"]["line"] for r in accepted] == [n for n in range(1, len(rows) + 1) if n not in rejects]
    for record in accepted:
        row = rows[record["source"]["line"] - 1]
        assert body(record) == expected(row), f"{name} row {record['source']['line']} changed in meaning"


def test_the_checks_can_fail():
    """The comparison is not vacuous: a record that lost a character, a turn or the system prompt differs."""
    row = source_rows(PUBLIC / "fastchat_dummy_conversation.json")[2]
    accepted, _, _ = validate_file(PUBLIC / "fastchat_dummy_conversation.json", max_chars=100_000)
    good = body(accepted[2])
    assert good == expected(row)
    assert len(good["messages"]) == 6
    for broken in (
        {**good, "messages": good["messages"][1:]},
        {
            **good,
            "messages": [
                *good["messages"][:-1],
                {"role": "assistant", "content": good["messages"][-1]["content"][:-1]},
            ],
        },
        {**good, "system": "You are a helpful assistant."},
    ):
        assert broken != expected(row)


def test_r1_rows_keep_their_reasoning_apart_and_tool_rows_are_refused():
    """LLaMA-Factory's reasoning rows: the reasoning part becomes the record's reasoning, the text part the answer,
    and the refusal of a tool row is the one its first offending turn (in order) calls for."""
    name = "llamafactory_reason_tool_use_demo.jsonl"
    rows = source_rows(PUBLIC / name)
    accepted, quarantined, _ = validate_file(PUBLIC / name, max_chars=100_000)
    assert [r["source"]["line"] for r in accepted] == [1, 4]
    for record in accepted:
        system, user, assistant = rows[record["source"]["line"] - 1]["messages"]
        assert [p["type"] for p in assistant["content"]] == ["reasoning", "text"]
        assert record["system"] == with_tools(system["content"][0]["value"], rows[record["source"]["line"] - 1])
        assert "## Tools" in record["system"]  # the row's tools list is kept in the system prompt
        assert record["messages"] == [
            {"role": "user", "content": user["content"][0]["value"]},
            {"role": "assistant", "content": assistant["content"][1]["value"]},
        ]
        assert record["reasoning"] == assistant["content"][0]["value"]
        assert record["reasoning"] not in record["messages"][-1]["content"]
    assert [q["line"] for q in quarantined] == [2, 3]
    for q in quarantined:
        turns = rows[q["line"] - 1]["messages"]
        i, turn = next(
            (i, t)
            for i, t in enumerate(turns)
            if t["role"] == "tool" or any(p["type"] not in ("text", "reasoning") for p in t["content"])
        )
        if turn["role"] == "tool":
            want = ("unknown_role", f"messages[{i}].role")
        else:
            j = next(j for j, p in enumerate(turn["content"]) if p["type"] not in ("text", "reasoning"))
            want = ("unsupported_content", f"messages[{i}].content[{j}].type")
        assert (q["reason"], q["field"]) == want == FILES[name][1][q["line"]]


# --- Rows written here, NOT public data -----------------------------------------------------------------------------
# Shapes that no public file in tests/fixtures/public covers yet. Each: (what it is, the row, the record body it must
# give, or the (reason, field) of its quarantine). The expected values are written out by hand.
OWN_ROWS = [
    (
        "OpenAI messages, DeepSeek API shape: the assistant message keeps its reasoning in reasoning_content",
        {
            "messages": [
                {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "5", "reasoning_content": "2 plus 3 makes 5."},
            ]
        },
        {
            "system": "",
            "reasoning": "2 plus 3 makes 5.",
            "messages": [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}],
        },
    ),
    (
        "OpenAI text parts ({type: text, text}), joined with nothing between",
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "prime."}]},
                {"role": "assistant", "content": [{"type": "text", "text": "7"}]},
            ]
        },
        {
            "system": "Be brief.",
            "reasoning": None,
            "messages": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
        },
    ),
    (
        "ShareGPT with a top-level system field and user/assistant turns (the OpenThoughts / Bespoke-Stratos shape)",
        {
            "system": "Think step by step, then answer.",
            "conversations": [
                {"from": "user", "value": "Is 9 prime?"},
                {"from": "assistant", "value": "No: 9 = 3 x 3."},
            ],
        },
        {
            "system": "Think step by step, then answer.",
            "reasoning": None,
            "messages": [
                {"role": "user", "content": "Is 9 prime?"},
                {"role": "assistant", "content": "No: 9 = 3 x 3."},
            ],
        },
    ),
    (
        "a system turn and the same top-level system: they agree",
        {
            "system": "Be brief.",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ],
        },
        {
            "system": "Be brief.",
            "reasoning": None,
            "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        },
    ),
    (
        "a system turn and a different top-level system",
        {
            "system": "Be brief.",
            "messages": [
                {"role": "system", "content": "Be thorough."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
            ],
        },
        ("conflicting_system", "system"),
    ),
    (
        "reasoning_content and an inline <think> block with a different text",
        {
            "messages": [
                {"role": "user", "content": "What is 2 + 3?"},
                {
                    "role": "assistant",
                    "content": "<think>\n2 plus 3 makes 6.\n</think>\n\n5",
                    "reasoning_content": "2 plus 3 makes 5.",
                },
            ]
        },
        ("conflicting_reasoning", "messages[-1]"),
    ),
    (
        "an image_url part in a user turn",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                    ],
                },
                {"role": "assistant", "content": "A cat."},
            ]
        },
        ("unsupported_content", "messages[0].content[1].type"),
    ),
]


def test_own_rows_for_shapes_no_public_file_covers(tmp_path):
    path = tmp_path / "own.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for _, row, _ in OWN_ROWS), encoding="utf-8")
    accepted, quarantined, report = validate_file(path, max_chars=100_000)
    assert report.rows == len(OWN_ROWS)
    got = {r["source"]["line"]: body(r) for r in accepted} | {q["line"]: (q["reason"], q["field"]) for q in quarantined}
    for n, (what, _, want) in enumerate(OWN_ROWS, start=1):
        assert got[n] == want, what


def test_whitespace_and_unicode_inside_the_text_are_kept():
    rows = source_rows(PUBLIC / "llamafactory_alpaca_zh_demo.json")
    accepted, _, _ = validate_file(PUBLIC / "llamafactory_alpaca_zh_demo.json", max_chars=100_000)
    art = accepted[5]["messages"][1]["content"]  # the X pattern: trailing spaces inside a code block
    assert art == rows[5]["output"] and "*         * \n    *   * \n" in art
    code = accepted[12]["messages"]
    assert code[0]["content"] == "生成一个算法，找到并显示两个文本字符串之间的最长公共子串。\n\n" + rows[12]["input"]
    assert "    # 创建一个(m+1)x(n+1)的二维数组来表示最长公共子串的长度\n" in code[1]["content"]
    assert accepted[1]["messages"][1]["content"] == '输出： "雷霆，公牛和网队：各显神通，角逐群雄!"'


def _containers(tmp_path):
    """CSV and Parquet copies of two public files, built from the source rows (nothing binary is committed)."""
    zh = source_rows(PUBLIC / "llamafactory_alpaca_zh_demo.json")
    sg = source_rows(PUBLIC / "fastchat_dummy_conversation.json")
    pd.DataFrame(zh).to_csv(tmp_path / "alpaca_zh.csv", index=False)
    pd.DataFrame(zh).to_parquet(tmp_path / "alpaca_zh.parquet")
    pd.DataFrame([{**r, "conversations": json.dumps(r["conversations"], ensure_ascii=False)} for r in sg]).to_csv(
        tmp_path / "sharegpt.csv", index=False
    )
    pd.DataFrame(sg).to_parquet(tmp_path / "sharegpt.parquet")
    return {"alpaca_zh.csv": zh, "alpaca_zh.parquet": zh, "sharegpt.csv": sg, "sharegpt.parquet": sg}


def test_csv_and_parquet_copies_say_the_same(tmp_path):
    for name, rows in _containers(tmp_path).items():
        accepted, quarantined, report = validate_file(tmp_path / name, max_chars=100_000)
        assert (quarantined, report.rows) == ([], len(rows)), name
        assert [body(r) for r in accepted] == [expected(r) for r in rows], name


def test_the_whole_stage_over_the_public_folder(tmp_path):
    result = validate(
        DataConfig(train_paths=[str(PUBLIC)], test_path="", replay_path=None, allowed_roots=[str(PUBLIC)]),
        tmp_path / "out",
    )
    total = sum(len(source_rows(PUBLIC / n)) for n in FILES)
    rejected = sum(len(r) for _, r in FILES.values())
    assert (result.rows_in, result.quarantined) == (total, rejected) == (60, 4)
    assert sum(1 for _ in open(result.train, encoding="utf-8")) == total - rejected
    reasons = sorted(json.loads(line)["reason"] for line in open(result.quarantine, encoding="utf-8"))
    assert reasons == ["role_order", "unknown_role", "unsupported_content", "unsupported_content"]
