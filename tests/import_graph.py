"""The import graph of nbhelpers: its modules, what each imports, circles and imports that run upward.

    .venv/bin/python tests/import_graph.py          # the report; exit status 1 if a rule is broken

Every module is parsed with `ast`, imports inside functions included (a lazy
import is still a dependency, and a circle closed by one is still a circle).
The package has three layers, and imports run one way, from a higher layer to
a lower one or within a layer, never up:

    2  nbhelpers.jobs.*   what drives papermill (series, sweeps, the reference run, the site)
    1  nbhelpers.runs.*   a run on disk (its folder, lock, training into it, loading it)
    0  nbhelpers.*        the teaching core

tests/test_project.py runs the same checks.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "nbhelpers"
LAYERS = {"jobs": 2, "runs": 1}  # a sub-package's layer; every other module is the core's, 0
LAYER_NAMES = {0: "core", 1: "runs", 2: "jobs"}


def module_name(path: Path, package_dir: Path = PACKAGE_DIR) -> str:
    """nbhelpers/runs/folder.py -> "nbhelpers.runs.folder"; an __init__.py names its package."""
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Every module of the package, by name."""
    return {module_name(path, package_dir): path for path in sorted(package_dir.rglob("*.py"))}


def _imported(node: ast.AST, importer: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that one import statement imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    if not isinstance(node, ast.ImportFrom):
        return set()
    if node.level:  # relative: from the importer's package, one level up per extra dot
        package = importer.split(".") if is_package else importer.split(".")[:-1]
        base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    # `from package import module` imports the module; `from module import name`, the module
    found = {f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known}
    names_only = [alias for alias in node.names if f"{base}.{alias.name}" not in known]
    if names_only and base in known:
        found.add(base)
    return found


def import_graph(package_dir: Path = PACKAGE_DIR) -> dict[str, set[str]]:
    """Each module's imports of the package's modules, those inside functions included."""
    found = modules(package_dir)
    known = set(found)
    graph = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text(), str(path))
        imports = set()
        for node in ast.walk(tree):
            imports |= _imported(node, name, path.name == "__init__.py", known)
        graph[name] = imports - {name}
    return graph


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other, directly or round a longer circle (Tarjan's SCCs)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) wherever a module imports one of a higher layer."""
    return sorted((importer, imported) for importer, imports in graph.items()
                  for imported in imports if layer(imported) > layer(importer))


def report(package_dir: Path = PACKAGE_DIR) -> tuple[str, bool]:
    """The report as text, and whether every rule holds."""
    graph = import_graph(package_dir)
    lines = [f"{len(graph)} modules (layer: imports):"]
    for module in sorted(graph, key=lambda m: (-layer(m), m)):
        imports = ", ".join(sorted(m.removeprefix("nbhelpers.") for m in graph[module])) or "-"
        lines.append(f"  [{LAYER_NAMES[layer(module)]}] {module}: {imports}")
    found_circles, upward = circles(graph), upward_imports(graph)
    lines.append(f"import circles: {len(found_circles)}")
    lines += [f"  {' <-> '.join(group)}" for group in found_circles]
    lines.append(f"upward imports: {len(upward)}")
    lines += [f"  {importer} ({LAYER_NAMES[layer(importer)]}) imports {imported} "
              f"({LAYER_NAMES[layer(imported)]})" for importer, imported in upward]
    return "\n".join(lines), not found_circles and not upward


if __name__ == "__main__":
    text, ok = report()
    print(text)
    sys.exit(0 if ok else 1)
