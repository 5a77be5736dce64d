"""The package's modules import one another without a cycle, deferred imports included.

A cycle hidden in a function body (`model` -> `checkpoint` -> `model`) still ties two ideas
together: neither can be read, tested or moved without the other. Imports under
`if TYPE_CHECKING:` are for annotations only and do not count.
"""

import ast
from pathlib import Path

import gpt124m

PACKAGE = Path(gpt124m.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(tree: ast.AST, known: set[str]) -> set[str]:
    """The package modules a module imports, wherever in it the import statement is."""
    found: set[str] = set()
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found & known


def import_graph(root: Path) -> dict[str, set[str]]:
    paths = {module_name(p): p for p in root.rglob("*.py")}
    known = set(paths)
    return {
        name: imports(ast.parse(path.read_text()), known) - {name} for name, path in paths.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    assert cycles(import_graph(PACKAGE)) == []


def test_a_deferred_import_cycle_is_found(tmp_path):
    """The check itself: the model <-> checkpoint cycle this package once had is caught."""
    pkg = tmp_path / "gpt124m"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(
        "def load():\n    from gpt124m.checkpoint import load_model\n    return load_model\n"
    )
    (pkg / "checkpoint.py").write_text("from gpt124m.model import load\n")
    (pkg / "config.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from gpt124m.model import load\n"
    )
    graph = {module_name_in(pkg, p): set() for p in pkg.glob("*.py")}
    known = set(graph)
    for p in pkg.glob("*.py"):
        graph[module_name_in(pkg, p)] = imports(ast.parse(p.read_text()), known)
    assert cycles(graph) == [["gpt124m.checkpoint", "gpt124m.model"]]


def module_name_in(pkg: Path, path: Path) -> str:
    return "gpt124m" if path.stem == "__init__" else f"gpt124m.{path.stem}"
