"""The package's shape: imports only downward (no cycle), modules and functions of one job each."""

import ast
from pathlib import Path

from maet.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "maet"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def _imports(tree: ast.AST, modules: set[str]) -> set[str]:
    """maet modules a module imports, deferred imports included."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "maet":
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maet."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("maet.")}
    return found & modules


def test_no_import_cycle_inside_the_package():
    files = {p.stem: p for p in PACKAGE.glob("*.py")}
    graph = {name: _imports(ast.parse(path.read_text()), set(files)) - {name} for name, path in files.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import cycle: " + " -> ".join(path[path.index(name):] + [name])
        if name not in done:
            for dep in graph[name]:
                visit(dep, path + [name])
            done.add(name)

    for name in graph:
        visit(name, [])


def test_no_long_module_and_no_long_function():
    too_long = []
    for path in sorted(PACKAGE.glob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{path.name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{path.name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def test_the_schema_module_holds_only_the_schema():
    tree = ast.parse((PACKAGE / "settings.py").read_text())
    assert not _imports(tree, {p.stem for p in PACKAGE.glob("*.py")}), "settings imports nothing of maet"
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ["choices", "register_schema"], functions
