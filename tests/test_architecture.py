"""The layout is the architecture: stages in tasks/, building blocks in r1lib/, the order of stages in flows/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from r1lib.config import PipelineConfig
from r1lib.presets import PRESETS, expand_preset, preset

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 500


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
