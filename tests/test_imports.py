"""Layers only point down: the package's import graph, imports inside functions included, has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pdmd_lab"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every ``pdmd_lab`` module that ``path`` imports, anywhere in the file (functions, classes, ``try``),
    plus ``importlib.import_module("pdmd_lab....")`` with a literal name. ``from a import b`` counts as
    an import of module ``a.b`` when that is a module, else of ``a``."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(mod: str) -> None:
        while mod and mod not in modules:  # pdmd_lab.x.y.attr -> the longest module prefix
            mod = mod.rpartition(".")[0]
        if mod:
            found.add(mod)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                add(sub if sub in modules else mod)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            add(node.args[0].value)
    found.discard(name)
    return {m for m in found if m.startswith("pdmd_lab")}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _path_in(comp: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One concrete cycle inside a component, for the failure message."""
    start = comp[0]
    members = set(comp)
    prev = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(_path_in(c, graph)) for c in cycles)


def test_the_walker_sees_imports_inside_functions(tmp_path):
    """The walker is not blind: a function-level import closing a loop is reported as a cycle."""
    graph = {"pdmd_lab.a": {"pdmd_lab.b"}, "pdmd_lab.b": set()}
    assert find_cycles(graph) == []
    pkg = tmp_path / "mod.py"
    pkg.write_text("def f():\n    from pdmd_lab import zoo\n    import pdmd_lab.data as d\n")
    modules = {"pdmd_lab.zoo": pkg, "pdmd_lab.data": pkg, "pdmd_lab.mod": pkg}
    assert _imports(pkg, "pdmd_lab.mod", modules) == {"pdmd_lab.zoo", "pdmd_lab.data"}
    graph = {"pdmd_lab.zoo": {"pdmd_lab.data"}, "pdmd_lab.data": {"pdmd_lab.zoo"}}
    assert find_cycles(graph) == [["pdmd_lab.data", "pdmd_lab.zoo"]]


@pytest.mark.parametrize("low, high", [("pdmd_lab.data", "pdmd_lab.zoo"), ("pdmd_lab.families.base", "pdmd_lab.zoo"),
                                       ("pdmd_lab.teacher", "pdmd_lab.zoo")])
def test_lower_layers_do_not_reach_up(low, high):
    graph = import_graph()
    seen, todo = set(), [low]
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        todo.extend(graph.get(v, ()))
    assert high not in seen, f"{low} reaches {high} through its imports"
