"""The layout's rules, read off the code: the import graph of both packages (module- and function-level imports).

- no import cycle between modules;
- ``lesa_core`` imports nothing of Ray, MLflow, Optuna, Typer, Rich or the orchestrator;
- private Ray / Tune / Optuna names (a ``_``-prefixed module or name) are imported by the compatibility module only.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("lesa_core", "orchestrator")
COMPAT_MODULE = "orchestrator.ray_backend.compat"
ORCHESTRATION_LIBRARIES = ("ray", "mlflow", "optuna", "typer", "rich", "orchestrator")
INTERNALS_OF = ("ray", "optuna")


@dataclass(frozen=True)
class Import:
    importer: str  # module doing the import
    target: str  # dotted module (or module.name) imported
    names: tuple[str, ...]  # names taken from it by ``from target import ...``
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, module] if module else base)


def _imports() -> list[Import]:
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            importer = _module_name(path)
            is_package = path.name == "__init__.py"
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):  # every level, functions too
                if isinstance(node, ast.Import):
                    found += [Import(importer, alias.name, (), node.lineno) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    target = _resolve(importer, is_package, node.level, node.module)
                    found.append(Import(importer, target, tuple(alias.name for alias in node.names), node.lineno))
    return found


IMPORTS = _imports()
MODULES = {_module_name(path) for package in PACKAGES for path in (REPO / package).rglob("*.py")}


def _project_edges() -> dict[str, set[str]]:
    """importer -> project modules it imports; ``from pkg import module`` counts as importing the module."""
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for item in IMPORTS:
        targets = [f"{item.target}.{name}" for name in item.names if f"{item.target}.{name}" in MODULES]
        if not targets and item.target in MODULES:
            targets = [item.target]
        edges[item.importer].update(target for target in targets if target != item.importer)
    return edges


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_both_packages():
    assert {"lesa_core.tasks.build", "orchestrator.cli", COMPAT_MODULE} <= MODULES
    edges = _project_edges()
    assert "lesa_core.tasks" in edges["orchestrator.ray_backend.train_loop"]


def test_no_import_cycle():
    cycle = _find_cycle(_project_edges())
    assert cycle is None, " -> ".join(cycle or [])


def test_a_planted_cycle_is_found():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_lesa_core_imports_no_orchestration_library():
    offending = [f"{item.importer}:{item.line} imports {item.target}" for item in IMPORTS
                 if item.importer.startswith("lesa_core") and item.target.split(".")[0] in ORCHESTRATION_LIBRARIES]
    assert not offending, offending


def _private(item: Import) -> bool:
    if item.target.split(".")[0] not in INTERNALS_OF:
        return False
    parts = item.target.split(".")
    return any(part.startswith("_") for part in parts) or any(name.startswith("_") for name in item.names)


@pytest.mark.parametrize("target, names, private", [
    ("ray.train.v2._internal.execution.controller", ("TrainController",), True),
    ("ray.tune", ("_private_thing",), True),
    ("ray.train", ("Checkpoint",), False),
    ("optuna.trial", ("FrozenTrial",), False),
])
def test_what_counts_as_private(target, names, private):
    assert _private(Import("m", target, names, 1)) is private


def test_private_ray_tune_and_optuna_names_are_imported_by_the_compatibility_module_only():
    offending = [f"{item.importer}:{item.line} imports {item.target} {item.names}" for item in IMPORTS
                 if _private(item) and item.importer != COMPAT_MODULE]
    assert not offending, offending
    assert any(_private(item) for item in IMPORTS if item.importer == COMPAT_MODULE)
