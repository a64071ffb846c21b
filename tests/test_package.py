"""`libraries` as a whole: the layer table of its docstring is the import graph's order.

A module imports project modules only at its top (not inside a function), and only modules
of a lower layer or, inside a sub-package, its own modules without a cycle; no module grows past
about 400 lines. Read from the source with `ast`, so a new import that breaks the order
fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
import re

import pytest

import libraries
from helpers import REPOSITORY_ROOT

PACKAGE = REPOSITORY_ROOT / "libraries"
MAX_LINES = 420  # "a few hundred": a module past this holds more than one concept


def layer_table() -> dict[str, int]:
    """{top-level module or sub-package: layer} from the package docstring's table."""
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \|", libraries.__doc__, flags=re.MULTILINE)
    return {name: int(layer) for layer, name in rows}


def module_files() -> dict[str, object]:
    """{dotted module name: path} of every module of the package."""
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPOSITORY_ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def project_imports(tree: ast.Module, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """[(imported libraries.* module, at module level)] of a parsed module."""
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names] + ([target] if target != "libraries" else [])
        else:
            continue
        for name in names:
            if name == "libraries" or name.startswith("libraries."):
                found.append((name, id(node) in top_level))
    return found


def owner(name: str, modules: dict[str, object]) -> str:
    """The longest existing module name that `name` (a module or an attribute of one) names."""
    parts = name.split(".")
    while ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts)


def test_the_layer_table_names_every_top_level_module():
    table = layer_table()
    top = {name.split(".")[1] for name in module_files() if name.count(".") >= 1}
    assert top - {"__main__"} == set(table), "every module or sub-package of libraries/ has one row in the table"


@pytest.mark.parametrize("module", sorted(module_files()))
def test_imports_follow_the_layers(module):
    modules, table = module_files(), layer_table()
    path = modules[module]
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_LINES, f"{path.name}: {len(source.splitlines())} lines"
    tree = ast.parse(source)
    own = module.split(".")[1] if module.count(".") else None
    for name, at_top in project_imports(tree, module, path.name == "__init__.py"):
        target = owner(name, modules)
        assert at_top, f"{module} imports {target} inside a function"
        if own is None or own == "__main__" or target == "libraries":
            continue  # the package itself and the command line (which imports each command's module)
        other = target.split(".")[1]
        if other == own:
            continue  # within one sub-package: ordered by the cycle check below
        assert table[other] < table[own], f"{module} (layer {table[own]}) imports {target} (layer {table[other]})"


def test_no_import_cycle():
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text())
        graph[module] = {owner(name, modules) for name, _ in project_imports(tree, module, path.name == "__init__.py")}
        graph[module] -= {module, "libraries"}
        # a sub-package's __init__ re-exports its modules: importing a module runs it first
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == 2:
            return
        assert state.get(module) != 1, "import cycle: " + " -> ".join(path + [module])
        state[module] = 1
        for target in sorted(graph[module]):
            if not module.startswith(target + ".") and target in graph:  # a module's own package runs first
                visit(target, path + [module])
        state[module] = 2

    for module in sorted(graph):
        visit(module, [])
