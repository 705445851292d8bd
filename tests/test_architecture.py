"""The package's import graph: no cycle between modules, no import of a layer above.

Layers, bottom to top (docs/architecture.md draws the same picture). A module may import its own
package and any package of a lower layer, never one of its own layer or above; lazy imports inside
functions count too, since they are dependencies all the same.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

LAYERS = (
    ("", "errors"),  # "" is the package's own __init__ (its version)
    ("labels", "geometry", "parallel", "distributed"),
    ("scores",),
    ("metrics", "losses"),
    ("data", "weather", "models"),
    ("report",),
    ("evaluation", "scoring", "synth", "world"),
    ("train",),
    ("experiments",),
    ("cli",),
    ("_entry",),  # the diffeel command: the CLI imported behind a guard
    ("__main__",),  # python -m diffeel
)
LAYER_OF = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}

# Inside diffeel.models: the registry, the loading helpers, the weight cache, the two-output convention and the
# residual adapter (which wraps any model) sit below every model.
MODEL_FOUNDATION = ("diffeel.models.registry", "diffeel.models.loading", "diffeel.models.factory", "diffeel.models.checkpoints",
                    "diffeel.models.hub", "diffeel.models.outputs", "diffeel.models.adapter")


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file, for every module of ``package`` under ``root``."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Each module of ``package`` → the modules of ``package`` it imports (anywhere in its code).

    ``from X import name`` imports the submodule ``X.name`` when there is one, else ``X`` itself.
    """
    modules = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = own_package.split(".")[: len(own_package.split(".")) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    submodule = f"{source}.{alias.name}"
                    targets.add(submodule if submodule in modules else source)
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, …, a]``, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def unit(module: str) -> str:
    """The top-level part of the package a module belongs to (``diffeel.models.rpl`` → ``models``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports of a package on the same layer or above, and modules in no layer."""
    problems = []
    for module, targets in sorted(graph.items()):
        if unit(module) not in LAYER_OF:
            problems.append(f"{module} belongs to no layer; add {unit(module)!r} to LAYERS and docs/architecture.md")
            continue
        for target in sorted(targets):
            if unit(target) != unit(module) and LAYER_OF.get(unit(target), len(LAYERS)) >= LAYER_OF[unit(module)]:
                problems.append(f"{module} imports {target}, which is not on a lower layer")
    return problems


@pytest.fixture(scope="module")
def graph():
    return import_graph(SOURCE, "diffeel")


def test_no_import_cycle(graph):
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_no_module_imports_its_own_layer_or_above(graph):
    assert layer_violations(graph) == []


def test_every_layer_exists(graph):
    units = {unit(module) for module in graph}
    assert units == set(LAYER_OF), f"LAYERS names {sorted(set(LAYER_OF) - units)} that do not exist"


def test_the_model_registry_and_loading_helpers_import_no_model(graph):
    for module in MODEL_FOUNDATION:
        models = {target for target in graph[module] if target.startswith("diffeel.models")}
        assert models <= set(MODEL_FOUNDATION), f"{module} imports {sorted(models - set(MODEL_FOUNDATION))}"


def test_the_checker_finds_cycles_and_upward_imports(tmp_path):
    """The checks above can fail: a tree with a cycle and an upward import is caught."""
    package = tmp_path / "diffeel"
    for folder in ("data", "synth"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "data" / "coco.py").write_text("from ..synth.bank import BankObject\n")  # data → synth: upward
    (package / "synth" / "bank.py").write_text("def read():\n    from .builder import records\n")
    (package / "synth" / "builder.py").write_text("from . import bank\n")  # bank ↔ builder
    graph = import_graph(tmp_path, "diffeel")
    assert graph["diffeel.synth.builder"] == {"diffeel.synth.bank"}
    assert find_cycle(graph) == ["diffeel.synth.bank", "diffeel.synth.builder", "diffeel.synth.bank"]
    assert layer_violations(graph) == ["diffeel.data.coco imports diffeel.synth.bank, which is not on a lower layer"]
