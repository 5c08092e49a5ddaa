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
    """A stage never looks up "the day's current version" or "yesterday's" of what it works on (a partial
    re-run would then judge one candidate and register another, or build on a graph that changed since):
    its inputs are arguments. The pipeline resolves what a stage reads besides its upstream results
    (validate's history, the graph's window and ID maps, the teacher's warm start) once, from the
    catalog, and the CLI says which (components/pipeline.default_inputs, catalog_inputs)."""
    offenders = []
    for plane_name in ("data", "model", "ship", "decide"):
        for path in (COMPONENTS / plane_name).rglob("*.py"):
            for fn in ast.walk(ast.parse(path.read_text())):
                if isinstance(fn, ast.FunctionDef) and fn.name.startswith("run_"):
                    offenders += [f"{module_name(path)}.{fn.name} line {line}: {name}" for line, name in lookups_in(fn)]
    assert offenders == []


LOOKUPS = {"current", "current_ref", "latest_before", "newest_id_maps", "accepted_days", "partition_refs"}


def lookups_in(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every call in ``tree`` that looks an artifact up by day (a method or a function)."""
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    names = [(c.lineno, c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")) for c in calls]
    return [(line, name) for line, name in names if name in LOOKUPS]


# The validate stage and the modules it was split into (components/data/validate.py imports each).
VALIDATE_MODULES = ("validate", "validation_result", "earlier_days", "anomalies", "contract", "duplicates",
                    "validation_report")


def test_the_graph_features_and_validate_modules_read_only_the_days_they_are_given():
    """Their rolling windows and validate's history are lists of references (components/pipeline.
    catalog_inputs), so not even a helper of theirs lists the accepted or quarantined days or looks up a
    graph by day. (validation_report's data_checks_html is the run report's section, not the stage: it
    shows the day's current graph's checks.)"""
    found = {m: lookups_in(ast.parse((COMPONENTS / "data" / f"{m}.py").read_text())) for m in ("graph", "features")}
    for m in VALIDATE_MODULES:
        tree = ast.parse((COMPONENTS / "data" / f"{m}.py").read_text())
        found[m] = [hit for fn in tree.body if isinstance(fn, ast.FunctionDef)
                    and not (m == "validation_report" and fn.name == "data_checks_html") for hit in lookups_in(fn)]
        found[m] += [hit for cls in tree.body if isinstance(cls, ast.ClassDef) for hit in lookups_in(cls)]
    assert found == {"graph": [], "features": [], **{m: [] for m in VALIDATE_MODULES}}


def test_every_part_of_validate_is_held_to_that_rule():
    """A module split out of validate.py later is covered above only once it is listed in VALIDATE_MODULES."""
    imported = {m.removeprefix("components.data.") for m in import_graph()["components.data.validate"]
                if m.startswith("components.data.")}
    assert imported - {"ingest", "coercion", "landed", "streaming"} <= set(VALIDATE_MODULES)  # ingest's parts: upstream


def test_the_lookup_finder_sees_methods_and_functions():
    tree = ast.parse("def run_x(layout):\n    layout.latest_before('graphs', d)\n    newest_id_maps(layout)\n    f(1)\n")
    assert lookups_in(tree) == [(2, "latest_before"), (3, "newest_id_maps")]


def test_no_stage_function_is_longer_than_sixty_lines():
    """A stage reads its references through the catalog, computes, publishes: longer, and those three
    are mixed in one body (split it into named steps)."""
    long = []
    for path in COMPONENTS.rglob("*.py"):
        long += [f"{module_name(path)}.{fn.name}: {fn.end_lineno - fn.lineno + 1} lines"
                 for fn in ast.walk(ast.parse(path.read_text()))
                 if isinstance(fn, ast.FunctionDef) and fn.name.startswith("run_") and fn.end_lineno - fn.lineno >= 60]
    assert long == []
