"""The package's modules import each other without a cycle, imports inside functions included.

A cycle hidden in a function-level import still couples the modules: neither can change or be
tested without the other, and the order of first calls decides what works. So the graph is read
from the source (every `import` statement anywhere in a module), not from what importing loads.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "modelshrink"


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (a `from pkg import sub` counts as importing pkg.sub)."""
    modules = module_names()

    def owner(name: str) -> str:
        while name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name].update(owner(t) for t in targets if t.split(".")[0] == "modelshrink")
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in graph[node]:
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40, "the walk found the package"
    assert cycles(graph) == []


def test_the_layers_point_one_way() -> None:
    graph = import_graph()
    assert graph["modelshrink.lineage"] <= {"modelshrink.errors"}, "lineage is a leaf"
    models = {name for name in graph if name.startswith("modelshrink.models")}
    assert not any("modelshrink.checkpoint" in graph[name] for name in models), "models know nothing of checkpoints"
    stages = {name for name in graph if name.startswith("modelshrink.stages")}
    assert not any(graph[name] & {"modelshrink.checkpoint", "modelshrink.loading"} for name in stages)


def test_the_walk_sees_imports_inside_functions() -> None:
    assert "modelshrink.recipe_run" in import_graph()["modelshrink"], "run_recipe imports recipe_run when called"
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
