"""Imports run one way: libraries <- services <- command line (docs/ARCHITECTURE.md, layers).

Every module of the tree is parsed (not imported, so a lazy import inside a function counts too)
and each ``import`` of a project package is checked against the layer table below.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: package -> (folder, layer rank). A module may import packages of a lower rank and its own
#: package; two packages of the same rank never import each other (the services are independent,
#: and so are the libraries).
PACKAGES = {
    "internal_auth": (ROOT / "libs" / "internal_auth", 0),
    "servicekit": (ROOT / "libs" / "servicekit", 0),
    "tokengate_client": (ROOT / "libs" / "tokengate_client", 0),
    "gateway": (ROOT / "gateway", 1),
    "backend": (ROOT / "backend", 1),
    # not installed, but a service all the same: internal_auth only, never the gateway's code
    "examples": (ROOT / "examples", 1),
    "tokengate": (ROOT / "tokengate", 2),
}


def _imported_packages(tree: ast.AST) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


def _violations() -> list[str]:
    problems = []
    for package, (folder, rank) in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for target in sorted(_imported_packages(tree) - {package}):
                if PACKAGES[target][1] >= rank:
                    problems.append(f"{path.relative_to(ROOT)} imports {target}")
    return problems


def test_imports_run_one_way() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    ("package", "source", "allowed"),
    [
        ("servicekit", "import gateway.app\n", False),
        ("internal_auth", "from servicekit import logs\n", False),
        ("gateway", "from backend.users import UserStore\n", False),
        ("backend", "import tokengate.migrate\n", False),
        ("gateway", "from servicekit.logs import log_event\n", True),
        ("tokengate", "from gateway.app import create_app\n", True),
    ],
)
def test_layer_rule(package: str, source: str, allowed: bool) -> None:
    """The checker itself: it must flag an upward or sideways import and pass a downward one."""
    rank = PACKAGES[package][1]
    targets = _imported_packages(ast.parse(source)) - {package}
    assert targets
    assert all(PACKAGES[t][1] < rank for t in targets) is allowed


def _module_imports(package: str) -> dict[str, set[str]]:
    """module -> the modules of ``package`` it imports at its top level, ``if TYPE_CHECKING:``
    blocks included (a cycle hidden from the interpreter is still one for the reader and mypy)."""
    folder = PACKAGES[package][0]
    graph: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        name = ".".join((package, *parts)).removesuffix(".__init__")
        edges: set[str] = set()
        body = ast.parse(path.read_text(encoding="utf-8")).body
        body += [n for node in body if isinstance(node, ast.If) for n in node.body]
        for node in body:
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] == package:
                    edges.add(node.module)
                    edges.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.split(".")[0] == package)
        graph[name] = edges
    return {name: edges & graph.keys() - {name} for name, edges in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle_inside_a_package(package: str) -> None:
    """A counters module imports no app state and a state container no handler: no module of a
    package needs, at import time, a module that needs it back (docs/ARCHITECTURE.md)."""
    assert _cycle(_module_imports(package)) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) == []
