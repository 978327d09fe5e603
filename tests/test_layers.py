"""The shape of app/, read from its source with :mod:`ast` (nothing imported): which layer may
import which, no import circles, no function with more than 8 parameters, no class over 200
lines.

Every ``import`` statement counts wherever it stands (inside a function, under
``if TYPE_CHECKING:``): a lazy import hides a dependency from the interpreter, not from the
design. ``from a import b`` is an edge to ``a.b`` when that is a module, else to ``a``.

The KNOWN_* lists name what is still wrong and being fixed (issue 21): each entry fails the
test once it is fixed, so that they only shrink; add none. (The circles strategies<->bumping and
comparison<->service and Engine's size and 14-parameter prepare were in them, until 699c5ef.)
"""

from __future__ import annotations

import ast
from collections.abc import Collection, Hashable, Iterator
from pathlib import Path

APP = Path(__file__).resolve().parents[1] / "app"

MAX_PARAMETERS = 8  # self and cls not counted
MAX_CLASS_LINES = 200

# Circles being removed (issue 21), as sets of modules.
KNOWN_CIRCLES: list[frozenset[str]] = []
# Functions ("path::Class.method") and classes ("path::Class") over the bounds (issue 21).
KNOWN_LONG_SIGNATURES: list[str] = []
KNOWN_LONG_CLASSES: list[str] = []

# (importer prefix, imported prefix, why not)
FORBIDDEN = [
    ("app.http", "app.api", "the HTTP middlewares run before and around the API: hand them "
                            "what they need (app.main) or share a neutral module (app.context)"),
    ("app.api", "app.http", "the API's routes know nothing of the middlewares around them"),
    ("app.engine", "app.api", "the engine knows nothing of HTTP"),
    ("app.engine", "app.http", "the engine knows nothing of HTTP"),
    ("app.engine", "app.main", "the engine knows nothing of the application that builds it"),
    ("app.config", "app.engine", "settings are read and checked without the engine (and torch)"),
    # the engine's rooms, lowest first: differentiation < compiled < runtime
    ("app.engine.differentiation", "app.engine.compiled",
     "the mathematics of differentiation knows nothing of compiled graphs"),
    ("app.engine.differentiation", "app.engine.runtime",
     "the mathematics of differentiation knows nothing of queues, workers or requests"),
    ("app.engine.compiled", "app.engine.runtime",
     "compiled mode builds on the mathematics only, never on the runtime that uses it"),
    ("app.engine.errors", "app.engine", "the engine's errors sit below every room"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(APP.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The app modules ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{importer} imports {imported}: {why}"
            for importer, targets in sorted(graph.items()) for imported in sorted(targets)
            for low, high, why in FORBIDDEN if _under(importer, low) and _under(imported, high)]


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _definitions(tree: ast.AST, prefix: str = "",
                 in_class: bool = False) -> Iterator[tuple[str, ast.AST, bool]]:
    """(qualified name, node, defined directly in a class body) of every def and class."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            yield name, node, in_class
            yield from _definitions(node, name + ".", isinstance(node, ast.ClassDef))
        else:
            yield from _definitions(node, prefix, in_class)


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> int:
    args = node.args
    named = [*args.posonlyargs, *args.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod"
                 for d in node.decorator_list)
    if method and not static and named and named[0].arg in ("self", "cls"):
        named = named[1:]
    return (len(named) + len(args.kwonlyargs) + (args.vararg is not None)
            + (args.kwarg is not None))


def oversized() -> tuple[dict[str, int], dict[str, int]]:
    """Functions over MAX_PARAMETERS (their count) and classes over MAX_CLASS_LINES (their
    lines), by "path::qualified name"."""
    signatures: dict[str, int] = {}
    classes: dict[str, int] = {}
    for path in sorted(APP.rglob("*.py")):
        where = path.relative_to(APP.parent).as_posix()
        for name, node, method in _definitions(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ClassDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_CLASS_LINES:
                    classes[f"{where}::{name}"] = lines
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                count = _parameters(node, method)
                if count > MAX_PARAMETERS:
                    signatures[f"{where}::{name}"] = count
    return signatures, classes


def test_the_graph_sees_the_imports_it_must() -> None:
    """The reader resolves absolute, relative, package and lazy imports (guards the guard)."""
    graph = import_graph()
    assert "app.api.pipeline" in graph["app.api.v2.routes"]  # from app.api.pipeline import ...
    assert "app.api.v2.framing" in graph["app.api.v2.routes"]  # from app.api.v2 import framing
    assert "app.context" in graph["app.http.request_id"]
    assert "app.api" not in graph["app.main"]  # from app.api import v1: the module, not the package


def test_no_layer_imports_one_it_must_not() -> None:
    assert layer_violations(import_graph()) == []


def _only_known(found: Collection[Hashable], known: Collection[Hashable], what: str,
                listed: str) -> None:
    """Nothing in ``found`` but ``known``, and nothing in ``known`` that is no longer found."""
    new = [item for item in found if item not in known]
    assert new == [], f"{what}: {new}"
    gone = [item for item in known if item not in found]
    assert gone == [], f"fixed: remove them from {listed}: {gone}"


def test_no_import_circles_but_the_known_ones() -> None:
    _only_known(circles(import_graph()), KNOWN_CIRCLES, "import circles", "KNOWN_CIRCLES")


def test_no_long_signatures_but_the_known_ones() -> None:
    signatures, _ = oversized()
    _only_known(signatures, KNOWN_LONG_SIGNATURES,
                f"more than {MAX_PARAMETERS} parameters (give them an owner): {signatures}",
                "KNOWN_LONG_SIGNATURES")


def test_no_long_classes_but_the_known_ones() -> None:
    _, classes = oversized()
    _only_known(classes, KNOWN_LONG_CLASSES,
                f"classes over {MAX_CLASS_LINES} lines (split them): {classes}",
                "KNOWN_LONG_CLASSES")


def test_settings_know_the_engines_strategies() -> None:
    """app.config checks DYDC_STRATEGIES against app.strategy_names without importing the
    engine: the two lists must be the same."""
    from app.engine.differentiation.strategies import STRATEGIES
    from app.strategy_names import STRATEGY_NAMES

    assert tuple(STRATEGIES) == STRATEGY_NAMES
