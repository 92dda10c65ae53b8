"""What validation does with a row beyond its shape (RowRules, the DataConfig fields of the same names): the field
length cap, a ``tools`` list written into the system prompt or refused (never dropped), and template placeholders
filled from ``data.placeholders`` or refused (an unfilled one would be trained verbatim)."""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from r1lib.data.columns import ColumnMap
from r1lib.data.records import RecordError
from r1lib.errors import ConfigError


class RowRules(BaseModel):
    """What validation does with a row beyond its shape: the field length cap, placeholder values, the tools policy
    (the DataConfig fields of the same names)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    max_chars: int = 100_000
    placeholders: dict[str, str] = {}
    placeholder_keys: list[str] = ["name", "author"]
    tools: Literal["system", "refuse"] = "system"
    columns: dict[str, ColumnMap] = {}  # file -> its column mapping (data.columns, its specs expanded)
    # train.method when it trains on preference rows (validate accepts them, refuses SFT training rows), and which
    # kinds it takes ("pair", "label"); None: an SFT run, where preference rows are refused (preference_data).
    preference_method: str | None = None
    preference_kinds: tuple[str, ...] = ()

    @classmethod
    def of(cls, cfg) -> RowRules:
        """The rules a DataConfig sets."""
        return cls(
            max_chars=cfg.max_field_chars,
            placeholders=cfg.placeholders,
            placeholder_keys=cfg.placeholder_keys,
            tools=cfg.tools,
            columns=expand_columns(cfg),
        )


def tools_prompt(tools: Any) -> str:
    """A ``tools`` list as the system-prompt section DeepSeek's chat templates write (``## Tools``, then per tool its
    name, description and JSON parameters). Accepts a list or its JSON text; each tool ``{"type": "function",
    "function": {...}}`` or the function object itself. A tool without a name is refused."""
    if isinstance(tools, str):
        try:
            tools = json.loads(tools) if tools.strip() else []
        except json.JSONDecodeError as exc:
            raise RecordError("tools", "tools", f"field 'tools' is not valid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # a number over 4300 digits, nesting too deep for the parser
            what = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
            raise RecordError("tools", "tools", f"field 'tools' is not readable JSON ({what})") from None
    if tools is None or tools == []:
        return ""
    if not isinstance(tools, list):
        raise RecordError("tools", "tools", f"field 'tools' must be a list of tools, got {type(tools).__name__}")
    lines = ["## Tools", "You have access to the following tools:", ""]
    for i, tool in enumerate(tools):
        spec = tool.get("function", tool) if isinstance(tool, dict) else None
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name.strip():
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise RecordError(
                "tools",
                f"tools[{i}]",
                f"tools[{i}] ({kind!r}) is not a named function; only function tools can be "
                "written into the system prompt (or set data.tools=refuse)",
            )
        lines += [f"### {name}", f"Description: {spec.get('description') or ''}", ""]
        lines += [f"Parameters: {json.dumps(spec.get('parameters', {}), ensure_ascii=False)}", ""]
    return "\n".join(lines).rstrip("\n")


_PLACEHOLDER_CACHE: dict[tuple, re.Pattern | None] = {}


def _placeholder_pattern(keys: tuple[str, ...]) -> re.Pattern | None:
    if keys not in _PLACEHOLDER_CACHE:
        alternatives = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
        _PLACEHOLDER_CACHE[keys] = (
            re.compile(rf"\{{\{{(?i:({alternatives}))\}}\}}|<({alternatives.upper()})>") if keys else None
        )
    return _PLACEHOLDER_CACHE[keys]


def fill_placeholders(body: dict, rules: RowRules) -> dict:
    """Every ``{{key}}``/``<KEY>`` placeholder in the body's texts replaced by its ``rules.placeholders`` value; a
    placeholder without one, or whose value holds a placeholder in turn (``{"name": "{{author}}"}``), refuses the
    row (it would be trained verbatim)."""
    values = {k.lower(): v for k, v in rules.placeholders.items()}
    pattern = _placeholder_pattern(tuple(sorted({k.lower() for k in rules.placeholder_keys} | set(values))))
    if pattern is None:
        return body

    def fill(text: str, field: str) -> str:
        def value(match: re.Match) -> str:
            key = (match.group(1) or match.group(2)).lower()
            if key not in values:
                raise RecordError(
                    "placeholder",
                    field,
                    f"'{field}' holds the unfilled template placeholder {match.group(0)}; give its value, e.g. "
                    f'--set \'data.placeholders={{"{key}": "..."}}\' (every placeholder key of the data), or '
                    "remove the row",
                )
            value = values[key]
            inner = pattern.search(value) if ("{{" in value or "<" in value) else None
            if inner is not None:  # filled in one pass, it would stay in the row verbatim
                raise RecordError(
                    "placeholder",
                    field,
                    f"'{field}' holds the template placeholder {match.group(0)}, whose value in data.placeholders "
                    f"holds the placeholder {inner.group(0)} in turn; a placeholder's value may not hold one (fix "
                    "data.placeholders)",
                )
            return value

        return pattern.sub(value, text) if ("{{" in text or "<" in text) else text

    body["system"] = fill(body["system"], "system")
    for i, message in enumerate(body["messages"]):
        message["content"] = fill(message["content"], f"messages[{i}]")
    if body["reasoning"] is not None:
        body["reasoning"] = fill(body["reasoning"], "reasoning")
    return body


def expand_columns(cfg) -> dict[str, ColumnMap]:
    """``data.columns`` per file: each key (an input spec, or one file of one) expanded as the inputs are. A key
    that names no file of train_paths or test_path is refused: its mapping would silently apply to nothing."""
    from r1lib.data.inputs import expand_inputs  # inputs reads the config, which names ColumnMap

    columns = getattr(cfg, "columns", None) or {}
    if not columns:
        return {}
    specs = [*cfg.train_paths, *([cfg.test_path] if cfg.test_path else [])]
    inputs = {str(f) for spec in specs for f in [str(spec), *expand_inputs(spec, cfg.allowed_roots)]}
    out: dict[str, ColumnMap] = {}
    for spec, mapping in columns.items():
        files = [f for f in dict.fromkeys([spec, *expand_inputs(spec, cfg.allowed_roots)]) if f in inputs]
        if not files:
            raise ConfigError(
                f"data.columns names {spec!r}, which is no input: key it by a path of data.train_paths or "
                f"data.test_path as written there ({sorted(map(str, specs))})"
            )
        out.update(dict.fromkeys(files, mapping))
    return out
