"""The layout is the architecture: stages in tasks/, building blocks in r1lib/, the order of stages in flows/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from r1lib.config import PipelineConfig
from r1lib.presets import PRESETS, expand_preset, preset

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


# Library modules over MAX_LINES that another branch is splitting: each xfails until then (strict: remove the entry
# once the module is short, or the test fails).
def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (inside functions and TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if p.name != "__init__.py")


@pytest.mark.parametrize("path", modules("tasks"), ids=lambda p: p.stem)
def test_a_stage_imports_no_other_stage(path):
    others = {f"tasks.{p.stem}" for p in modules("tasks")} - {f"tasks.{path.stem}"}
    assert not imported_modules(path) & (others | {"tasks"}), f"{path.name} imports another stage"


@pytest.mark.parametrize("path", modules("r1lib"), ids=lambda p: str(p.relative_to(ROOT / "r1lib")))
def test_the_library_imports_no_stage_and_no_flow(path):
    bad = {m for m in imported_modules(path) if m.split(".")[0] in ("tasks", "flows")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", modules("tasks"), ids=lambda p: p.stem)
def test_every_module_in_tasks_is_a_stage_with_its_task_last(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tasks = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any("task" in ast.unparse(d).split("(")[0] for d in node.decorator_list)
    ]
    assert tasks, f"{path.name} defines no Prefect task: building blocks belong in r1lib/"
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    first_task = defs.index(tasks[0])
    plain_after = [n.name for n in defs[first_task:] if n not in tasks and not n.name.startswith("_")]
    assert not plain_after, f"{path.name}: {plain_after} come after its @task (the thin task wrappers go last)"


@pytest.mark.parametrize("path", modules("tasks") + modules("flows"), ids=lambda p: str(p.relative_to(ROOT)))
def test_stage_and_flow_modules_stay_short(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (limit {MAX_LINES})"


@pytest.mark.parametrize("path", sorted((ROOT / "r1lib").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_modules_stay_short(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines (limit {MAX_LINES}): split it by concern"


def subpackages(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).iterdir() if p.is_dir() and any(p.rglob("*.py")))


@pytest.mark.parametrize("package", subpackages("r1lib"), ids=lambda p: p.name)
def test_every_library_group_says_what_it_holds(package):
    init = package / "__init__.py"
    assert init.exists(), f"r1lib/{package.name}/ has no __init__.py (a namespace package by accident)"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc, f"r1lib/{package.name}/__init__.py has no docstring: its first line says what the group holds"
    first = doc.splitlines()[0]
    # "<Group>: <what it holds>." on one line, e.g. "Export: merging an adapter into 16-bit weights, GGUF ...".
    match = re.fullmatch(r"(?P<group>[A-Z][^:]*): (?P<holds>.+)\.", first)
    assert match, f"r1lib/{package.name}/__init__.py: first docstring line {first!r} is not '<Group>: <what it holds>.'"
    assert len(match["holds"].split()) >= 4, f"r1lib/{package.name}/__init__.py: {first!r} says too little"


# --- The import graph of r1lib, tasks, flows and bench has no cycle -------------------------------------------------

GRAPH_FOLDERS = ("r1lib", "tasks", "flows", "bench")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Every Import/ImportFrom node at any depth (functions too), except under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)  # the else branch runs
            continue
        stack.extend(ast.iter_child_nodes(node))


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports. ``import a.b.c`` and ``from a.b import c`` name the deepest project
    module they reach: ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``."""
    paths = {module_name(p): p for folder in GRAPH_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}
    known = set(paths)

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in known:
                return ".".join(parts[:end])
        return None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {resolve(alias.name) for alias in node.names}
                continue
            base = node.module or ""
            if node.level:  # relative: from .x import y, from .. import z
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                targets.add(resolve(f"{base}.{alias.name}") if f"{base}.{alias.name}" in known else resolve(base))
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) for each strongly connected group of modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for group in groups:  # the shortest way back to the group's first module, within the group
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:
            node = queue.pop(0)
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    cycles.append([*paths[node], start])
                    queue = []
                    break
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    queue.append(nxt)
    return sorted(cycles)


def test_import_cycles_are_found_and_printed():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert "r1lib.data.readers" in graph["tasks.validate"]  # the graph sees the imports it is meant to
    cycles = import_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_round_trips_through_a_dump_and_the_flow_parameter(name):
    config = preset(name)
    assert config.preset == name  # the key, so the dump expands back to this preset
    dumped = config.model_dump(mode="json")  # what the registry stores and a run's parameters show
    again = PipelineConfig.model_validate(expand_preset(dumped))
    assert again == config
    partial = PipelineConfig.model_validate(expand_preset({"preset": name, "train": {"seed": 7}}))
    assert partial.train.seed == 7 and partial.model_copy(update={"train": config.train}) == config


def test_every_declared_stage_has_its_task_and_takes_the_sections_it_declares():
    """r1lib/stages.py names each stage once: a task function ``<stage>_task`` (or, for the mapped data stages,
    ``<stage>_merge_task``) exists, the sections the flow hands it by keyword are its parameters, and each data
    filter has the shard and merge tasks the data flow maps (flows/data.py)."""
    import importlib
    import inspect

    from r1lib.stages import DATA_FILTERS, STAGES

    tasks = {}
    for path in modules("tasks"):
        module = importlib.import_module(f"tasks.{path.stem}")
        tasks |= {name: getattr(module, name) for name in dir(module) if name.endswith("_task")}
    for s in STAGES:
        key = s.name.replace("-", "_")
        assert f"{key}_task" in tasks or f"{key}_merge_task" in tasks, f"stage {s.name}: no task in tasks/"
        if f"{key}_task" in tasks:  # called once by the flow, its sections by keyword (r1lib.stages.settings)
            assert set(s.sections) <= set(inspect.signature(tasks[f"{key}_task"].fn).parameters), s.name
    for s in DATA_FILTERS:
        key = s.name.replace("-", "_")
        shard, merge = tasks[f"{key}_shard_task"], tasks[f"{key}_merge_task"]
        assert list(inspect.signature(shard.fn).parameters) == ["shard", "index", "cfg", "context", "out_dir"]
        assert list(inspect.signature(merge.fn).parameters) == ["parts", "cfg", "out_dir"]
        assert s.section is not None and s.section in PipelineConfig.model_fields
