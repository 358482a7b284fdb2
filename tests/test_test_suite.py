"""The house rules of tests/ itself: every fixture name is defined once (a second
definition silently shadows the first where both are visible), and test modules share
helpers through helper modules (tests/helpers.py and the like), never by importing
another test module or conftest.py."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_fixture(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr == "fixture"
    return isinstance(target, ast.Name) and target.id == "fixture"


def _fixture_name(func: ast.FunctionDef | ast.AsyncFunctionDef, decorator: ast.expr) -> str:
    if isinstance(decorator, ast.Call):
        for kw in decorator.keywords:
            if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                return str(kw.value.value)
    return func.name


def fixture_definitions(root: Path) -> dict[str, list[str]]:
    """Fixture name -> ``path:line`` of every definition in the .py files under root."""
    found = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for dec in node.decorator_list:
                    if _is_fixture(dec):
                        where = f"{path.relative_to(root)}:{node.lineno}"
                        found[_fixture_name(node, dec)].append(where)
    return dict(found)


def _is_test_module(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return last.startswith("test_") or last == "conftest"


def imports_of_test_modules(root: Path) -> dict[str, list[str]]:
    """Test module (path) -> the test modules or conftest modules it imports."""
    found = {}
    for path in sorted(root.rglob("test_*.py")):
        bad = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bad += [a.name for a in node.names if _is_test_module(a.name)]
            elif isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                if node.module and _is_test_module(node.module):
                    bad.append(module)
                elif not node.module:  # from . import test_x
                    bad += [f"{module}{a.name}" for a in node.names if _is_test_module(a.name)]
        if bad:
            found[str(path.relative_to(root))] = bad
    return found


def test_no_fixture_name_is_defined_twice():
    twice = {name: where for name, where in fixture_definitions(TESTS).items() if len(where) > 1}
    assert twice == {}


def test_no_test_module_imports_another_test_module_or_conftest():
    assert imports_of_test_modules(TESTS) == {}


def test_the_checks_find_what_they_look_for(tmp_path):
    (tmp_path / "conftest.py").write_text(
        "import pytest\n\n@pytest.fixture\ndef run():\n    pass\n"
    )
    (tmp_path / "test_a.py").write_text(
        "from pytest import fixture\n\n@fixture(scope='module')\ndef run():\n    pass\n\n"
        "@fixture(name='other')\ndef _other():\n    pass\n"
    )
    (tmp_path / "test_b.py").write_text(
        "from tests.test_a import run\nfrom tests.conftest import X\nfrom . import test_a\n"
        "import tests.test_a\nfrom tests.helpers import TINY\n"
    )
    defs = fixture_definitions(tmp_path)
    assert defs == {"run": ["conftest.py:4", "test_a.py:4"], "other": ["test_a.py:8"]}
    assert imports_of_test_modules(tmp_path) == {
        "test_b.py": ["tests.test_a", "tests.conftest", ".test_a", "tests.test_a"]
    }
