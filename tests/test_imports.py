"""The import graph of icr_data has no cycles, imports inside functions and methods included.

An AST walk over every module of the package collects each import of an icr_data module wherever
it is written (module level, functions, methods, classes, try/if blocks); only imports under
`if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "icr_data"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


def _modules(root: Path = ROOT) -> dict[str, Path]:
    """Module name (relative to the package, e.g. 'models' or 'sub.mod') -> its file."""
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts) or "__init__"] = f
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(name: str, file: Path, known: dict[str, Path]) -> set[str]:
    """The icr_data modules a file imports (skipping `if TYPE_CHECKING:` bodies)."""
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    is_pkg = file.name == "__init__.py"
    here = [] if name == "__init__" else name.split(".")
    package = here if is_pkg else here[:-1]  # the package relative imports start from
    found: set[str] = set()

    def target(dotted: str) -> str | None:
        """'icr_data.a.b' -> the longest known module it names ('a.b' or 'a'), or None."""
        parts = dotted.split(".")
        if parts[0] != PACKAGE:
            return None
        parts = parts[1:]
        while parts:
            if ".".join(parts) in known:
                return ".".join(parts)
            parts = parts[:-1]
        return "__init__"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                t = target(alias.name)
                if t:
                    found.add(t)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base_dotted = ".".join([PACKAGE, *base])
            else:
                base_dotted = ""
            mod = ".".join(p for p in (base_dotted, node.module or "") if p)
            t = target(mod)
            if t:
                for alias in node.names:  # `from icr_data import models`: a module, not a name
                    sub = f"{t}.{alias.name}" if t != "__init__" else alias.name
                    found.add(sub if sub in known else t)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the icr_data modules it imports, for the package folder `root`."""
    known = _modules(root)
    return {name: _imported(name, f, known) for name, f in known.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of the graph: for each knot (strongly connected component of more than one
    module, found with Tarjan's algorithm), the shortest cycle through each of its modules, once
    each; a cycle is a path that starts and ends at the same module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for comp in components:
        members = set(comp)
        for start in comp:  # the shortest cycle through each module of the knot, once each
            cycle = _shortest_cycle(graph, members, start)
            i = cycle.index(min(cycle[:-1]))
            canon = tuple(cycle[i:-1] + cycle[:i])
            if canon not in seen:
                seen.add(canon)
                cycles.append([*canon, canon[0]])
    return cycles


def _shortest_cycle(graph: dict[str, set[str]], members: set[str], start: str) -> list[str]:
    """Breadth-first: the shortest path from `start` back to itself inside one knot."""
    prev: dict[str, str] = {}
    queue = [start]
    seen = {start}
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while path[0] != start:
                    path.insert(0, prev[path[0]])
                return [*path, start]
            if w not in seen:
                seen.add(w)
                prev[w] = v
                queue.append(w)
    raise AssertionError(f"{start} is in a knot but on no cycle")


def test_walk_sees_every_kind_of_import():
    graph = import_graph()
    models, train = "stages.models", "commands.train"
    assert models in graph and "base.errors" in graph[models]  # `from icr_data.base.errors import`
    assert train in graph and models in graph[train]  # `from icr_data.stages import models`


def test_the_import_graph_has_no_cycles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles in icr_data:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_reports_a_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    two = {"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}
    assert find_cycles(two) == [["a", "b", "a"], ["a", "c", "a"]]


def test_walk_resolves_every_spelling(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from . import inner\n")
    (pkg / "sub" / "inner.py").write_text("from .. import a\nfrom ..b import x\n")
    (pkg / "a.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import icr_data.b\n"
        "if TYPE_CHECKING:\n    from icr_data import c\n"
        "def f():\n    from icr_data.sub.inner import y\n"
        "class K:\n    def m(self):\n        import icr_data.sub\n"
    )
    (pkg / "b.py").write_text(
        "try:\n    from icr_data import a, b\nexcept ImportError:\n    pass\n"
    )
    (pkg / "c.py").write_text("")
    assert import_graph(pkg) == {
        "__init__": set(),
        "sub": {"sub.inner"},
        "sub.inner": {"a", "b"},
        "a": {"b", "sub.inner", "sub"},
        "b": {"a"},
        "c": set(),
    }
    assert sorted(find_cycles(import_graph(pkg))) == [
        ["a", "b", "a"],
        ["a", "sub", "sub.inner", "a"],
        ["a", "sub.inner", "a"],
    ]


def test_no_module_imports_another_modules_private_names():
    """`from icr_data.x import _helper` (or `x._helper(...)` on an imported icr_data module)
    reaches into another module's insides: what is shared is public."""
    offences = []
    for name, file in _modules().items():
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        aliases = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        offences.append(f"{name}: from {node.module} import {a.name}")
                    if node.module == PACKAGE:
                        aliases.add(a.asname or a.name)
            elif isinstance(node, ast.Import):
                aliases |= {a.asname for a in node.names if a.name.startswith(PACKAGE) and a.asname}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):  # fmt: skip
                offences.append(f"{name}: {node.value.id}.{node.attr}")
    assert not offences, "\n".join(offences)


LAYERS = ("base", "store", "core", "pairing", "stages", "commands", "view", "cli")
"""The package's floors, lowest first: a module imports only from its own floor or below."""


def floor(module: str) -> int:
    return LAYERS.index(module.split(".")[0]) if module != "__init__" else -1


def test_every_module_sits_on_a_floor():
    loose = [m for m in import_graph() if m != "__init__" and m.split(".")[0] not in LAYERS]
    assert not loose, f"modules outside the layer folders {LAYERS}: {loose}"


def test_imports_only_go_down():
    up = sorted(f"{a} -> {b}" for a, deps in import_graph().items() for b in deps
                if floor(b) > floor(a))  # fmt: skip
    assert not up, "imports going up a floor:\n" + "\n".join(up)
