"""scripts/*.py: each thin Hydra entry compiles and runs a stage that exists (a broken entry is
otherwise found only when its rule runs, possibly hours into a pipeline)."""

import ast
import importlib

import pytest

from conftest import PROJECT_ROOT

SCRIPTS = sorted((PROJECT_ROOT / "scripts").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_script_compiles_and_names_an_existing_stage_function(script):
    tree = ast.parse(script.read_text(), filename=str(script))
    assert ast.get_docstring(tree), f"{script.name}: no docstring"
    imported = {alias.asname or alias.name: node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_stage"]
    if not calls:
        pytest.skip(f"{script.name} does not call run_stage")
    target = calls[0].args[1]
    assert isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name), ast.dump(target)
    module = importlib.import_module(f"{imported[target.value.id]}.{target.value.id}")
    assert callable(getattr(module, target.attr)), f"{script.name}: {module.__name__}.{target.attr} is not callable"
