"""Import rules of components/: no cycles, planes import only downward, a short tower.

core <- data <- model <- ship <- decide: a module may import its own plane and the planes below it.
Every import counts, also the ones inside a function (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
PLANES = ("core", "data", "model", "ship", "decide")
MAX_LAYERS = 8


def module_name(path: Path) -> str:
    parts = path.relative_to(COMPONENTS.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the components modules it imports (``from pkg import module`` names the module)."""
    files = {module_name(p): p for p in COMPONENTS.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "components":
                found = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                targets |= found or {node.module}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names if a.name.split(".")[0] == "components"}
        # a package's __init__ is not a dependency of what is inside it
        graph[name] = {t for t in targets if t != name and not files[t].name == "__init__.py"} if targets else set()
    return graph


def plane(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in PLANES else None


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def layers(graph: dict[str, set[str]]) -> int:
    """Floors of the tower: a module stands one above the highest module it imports."""
    @cache
    def height(node: str) -> int:
        return 1 + max((height(n) for n in graph[node]), default=0)

    return max(height(n) for n in graph)


def test_the_graph_is_read_from_the_sources():
    graph = import_graph()
    assert "components.core.catalog" in graph["components.data.graph"]
    assert "components.pipeline" in graph["components.cli"]  # a plain module import is seen too


def test_no_import_cycles():
    assert find_cycle(import_graph()) is None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert layers({"a": {"b"}, "b": {"c"}, "c": set()}) == 3


def test_planes_import_only_downward():
    upward = [f"{m} -> {t}" for m, targets in import_graph().items() for t in sorted(targets)
              if plane(m) and plane(t) and PLANES.index(plane(t)) > PLANES.index(plane(m))]
    assert upward == []


def test_every_module_lives_in_a_plane():
    outside = [m for m in import_graph() if plane(m) is None and m not in ("components", "components.cli",
                                                                           "components.pipeline")
               and m.split(".")[1] not in PLANES]
    assert outside == []


def test_model_definitions_import_no_stage_module():
    allowed = ("components.model.models.", "components.core.")
    offenders = [f"{m} -> {t}" for m, targets in import_graph().items() if m.startswith("components.model.models.")
                 for t in sorted(targets) if not t.startswith(allowed)]
    assert offenders == []


def test_nothing_imports_the_cli_or_the_pipeline_table_from_a_plane():
    offenders = [f"{m} -> {t}" for m, targets in import_graph().items() if plane(m)
                 for t in targets if t in ("components.cli", "components.pipeline")]
    assert offenders == []


def test_nothing_in_components_imports_airflow():
    offenders = []
    for path in COMPONENTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{module_name(path)}: {n}" for n in names if n.split(".")[0] == "airflow"]
    assert offenders == []


def test_the_tower_is_at_most_eight_layers():
    assert layers(import_graph()) <= MAX_LAYERS


def test_stages_take_their_inputs_as_references():
    """A stage of the model, ship or decide plane never looks up "the day's current version" of what it
    works on (a partial re-run would then judge one candidate and register another): its inputs are
    arguments. The CLI resolves a default for a day and says which (components/pipeline.default_inputs)."""
    lookups = {"current", "current_ref"}
    offenders = []
    for plane_name in ("model", "ship", "decide"):
        for path in (COMPONENTS / plane_name).rglob("*.py"):
            for fn in ast.walk(ast.parse(path.read_text())):
                if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("run_")):
                    continue
                offenders += [f"{module_name(path)}.{fn.name} line {call.lineno}" for call in ast.walk(fn)
                              if isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                              and call.func.attr in lookups]
    assert offenders == []


def test_no_stage_function_is_longer_than_sixty_lines():
    """A stage reads its references through the catalog, computes, publishes: longer, and those three
    are mixed in one body (split it into named steps)."""
    long = []
    for path in COMPONENTS.rglob("*.py"):
        long += [f"{module_name(path)}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines"
                 for fn in ast.walk(ast.parse(path.read_text()))
                 if isinstance(fn, ast.FunctionDef) and fn.name.startswith("run_") and fn.end_lineno - fn.lineno >= 60]
    assert long == []
