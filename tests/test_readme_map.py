"""tests/README.md maps rules to tests: every test it names exists, and every test file is on it."""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

TESTS = Path(__file__).resolve().parent
README = (TESTS / "README.md").read_text()


@lru_cache(maxsize=None)  # a file is named in many rows
def defined_tests(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_named_test_exists():
    missing = []
    for row in README.splitlines():
        current = None
        for ref in re.findall(r"`((?:\w+/)*test_\w+\.py)?(::\w+)?`", row):
            file, name = ref
            if file:
                current = file
            if name and current:
                path = TESTS / current
                if not path.exists() or name[2:] not in defined_tests(path):
                    missing.append(f"{current}{name}")
            elif file and not (TESTS / file).exists():
                missing.append(file)
    assert not missing, f"tests/README.md names tests that do not exist: {missing}"


def test_every_test_file_is_on_the_map():
    files = sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob("test_*.py"))
    absent = [f for f in files if f"`{f}" not in README]
    assert not absent, f"add these to tests/README.md under their area: {absent}"
