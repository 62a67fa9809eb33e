"""The package's import graph (issue 27, "one road from config to the API"): stages are adapters from the
composed config to the library, so no stage imports another stage, nothing in the library imports a
stage, and no two modules import each other, directly or around a circle.

Read from the source with ``ast`` (nothing is imported), counting imports at module level and inside
functions alike: a function-level import is the same dependency, only deferred.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "backlens"
STAGES = f"{PACKAGE}.stages"
# The one module outside the stages that may import them: the entry point mapping a stage's name to
# its ``run`` (every stage module, so it names them all).
STAGE_ENTRY_POINT = f"{PACKAGE}.stage"


def module_files(source: Path = SOURCE) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its __init__.py)."""
    modules = {}
    for path in sorted((source / PACKAGE).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports (``from a import b`` gives a and a.b), relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            names.add(origin)
            names.update(f"{origin}.{alias.name}" for alias in node.names)
    return names


def import_graph(source: Path = SOURCE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = module_files(source)
    return {module: {name for name in imported_names(module, path) if name in files and name != module}
            for module, path in files.items()}


def in_stages(module: str) -> bool:
    return module == STAGES or module.startswith(f"{STAGES}.")


def stage_imports_stage(graph: dict[str, set[str]]) -> list[str]:
    """"a -> b" for each stage module importing another stage module (the empty package aside)."""
    return sorted(f"{module} -> {target}" for module, targets in graph.items() if in_stages(module)
                  for target in targets if in_stages(target) and target != STAGES)


def library_imports_stage(graph: dict[str, set[str]]) -> list[str]:
    """"a -> b" for each module outside the stages (the entry point aside) importing one."""
    return sorted(f"{module} -> {target}" for module, targets in graph.items()
                  if not in_stages(module) and module != STAGE_ENTRY_POINT
                  for target in targets if in_stages(target))


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, modules in sorted order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_graph_sees_the_package():
    graph = import_graph()
    assert {"backlens.api.editing", "backlens.editing.methods", "backlens.commands.main"} <= set(graph)
    # Function-level and "from package import module" imports count.
    assert "backlens.api.models" in graph["backlens.commands.loading"]
    assert "backlens.editing.weights" in graph["backlens.api.editing"]


def test_no_stage_imports_another_stage():
    assert stage_imports_stage(import_graph()) == []


def test_nothing_outside_the_stages_imports_one():
    assert library_imports_stage(import_graph()) == []


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_checks_can_fail(tmp_path):
    """Each check reports a tree that breaks it (a copy with one stage importing another, a library
    module importing a stage, and two modules importing each other at function level)."""
    root = tmp_path / PACKAGE
    for folder, files in {"": ["__init__"], "stages": ["__init__", "one", "two"], "lib": ["__init__", "a", "b"]}.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            (root / folder / f"{name}.py").write_text("")
    (root / "stages" / "one.py").write_text("from backlens.stages import two\n")
    (root / "lib" / "a.py").write_text("def f():\n    from backlens.lib.b import g\n")
    (root / "lib" / "b.py").write_text("from . import a\nimport backlens.stages.one\n")
    graph = import_graph(tmp_path)
    assert stage_imports_stage(graph) == ["backlens.stages.one -> backlens.stages.two"]
    assert library_imports_stage(graph) == ["backlens.lib.b -> backlens.stages.one"]
    assert find_cycle(graph) == ["backlens.lib.a", "backlens.lib.b", "backlens.lib.a"]
