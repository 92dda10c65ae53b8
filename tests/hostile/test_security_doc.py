"""SECURITY.md names a test for each guarantee (``file::name``, or ``::name`` after a file in the same cell): every
one it names exists, so a renamed or deleted test cannot leave a guarantee without its proof."""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT


def named_tests() -> list[tuple[str, str]]:
    """(file, test name) for every test the guarantee table of SECURITY.md names."""
    text = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    table = text.split("| Guarantee | Test |", 1)[1].split("\n## ", 1)[0]
    found = []
    for row in table.splitlines()[2:]:
        current = None
        for path, name in re.findall(r"`(tests/[\w/]+\.py)?::(\w+)`", row):
            current = path or current
            assert current, f"a test named without its file: {row[:120]}"
            found.append((current, name))
    return found


def test_every_test_security_md_names_exists():
    named = named_tests()
    assert len(named) >= 40, named
    missing = []
    for path, name in named:
        source = ROOT / path
        tree = ast.parse(source.read_text(encoding="utf-8")) if source.exists() else None
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)} if tree else set()
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert missing == [], f"SECURITY.md names tests that do not exist: {missing}"
