"""The package's shape: subpackages in layers that import only downward, no import cycle, modules
and functions of one job each."""

import ast

import pytest

import maet
from maet.schema.resolvers import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "maet"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def module_name(path) -> str:
    """`maet/method/merging.py` -> `maet.method.merging`; a package's `__init__.py` -> the package."""
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.AST]:
    """Every module of the package, subpackages included: dotted name -> its syntax tree."""
    return {module_name(p): ast.parse(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.AST, names: set[str]) -> set[str]:
    """The maet modules a module imports (deferred imports included), as dotted names in `names`."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("maet"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("maet")}
    return {name for name in found if name in names} - {"maet"}


def graph() -> dict[str, set[str]]:
    trees = modules()
    return {name: imported(tree, set(trees)) - {name} for name, tree in trees.items()}


def layer(module: str) -> int:
    """The index of a module's subpackage in `maet.LAYERS` (bottom = 0)."""
    parts = module.split(".")
    assert len(parts) >= 2 and parts[1] in maet.LAYERS, f"{module} is in no subpackage of maet.LAYERS"
    return maet.LAYERS.index(parts[1])


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    """Every import of a module from a subpackage above its own."""
    return sorted(f"{a} ({maet.LAYERS[layer(a)]}) imports {b} ({maet.LAYERS[layer(b)]})"
                  for a, deps in edges.items() for b in deps if layer(b) > layer(a))


def test_every_module_lives_in_a_subpackage_of_the_layer_list():
    loose = [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"]
    assert not loose, f"modules outside the subpackages: {loose}"
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(maet.LAYERS)


def test_subpackages_import_only_their_own_layer_and_the_layers_below():
    assert upward_imports(graph()) == []


def test_an_upward_import_is_caught():
    edges = graph()
    edges["maet.method.merging"] = edges["maet.method.merging"] | {"maet.engine.pipeline"}
    assert upward_imports(edges) == ["maet.method.merging (method) imports maet.engine.pipeline (engine)"]


@pytest.mark.parametrize("source, expected", [
    ("from maet.method import merging", {"maet.method.merging"}),
    ("from maet.method.merging import merge_tensor", {"maet.method.merging"}),
    ("import maet.engine.pipeline", {"maet.engine.pipeline"}),
    ("def f():\n    from maet import world", {"maet.world"}),
])
def test_imports_are_read_in_every_form(source, expected):
    names = {"maet.method.merging", "maet.engine.pipeline", "maet.world"}
    assert imported(ast.parse(source), names) == expected


def test_no_import_cycle_inside_the_package():
    edges = graph()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import cycle: " + " -> ".join(path[path.index(name):] + [name])
        if name not in done:
            for dep in edges[name]:
                visit(dep, path + [name])
            done.add(name)

    for name in edges:
        visit(name, [])


def test_no_long_module_and_no_long_function():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source, name = path.read_text(), path.relative_to(PACKAGE)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long


def test_the_schema_module_holds_only_the_schema():
    tree = ast.parse((PACKAGE / "schema" / "settings.py").read_text())
    assert not imported(tree, set(modules())), "settings imports nothing of maet"
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ["choices", "register_schema"], functions
