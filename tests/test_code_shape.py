"""The shape of the code in nmt_kd/ (issue #17): no function longer than 80 lines, and no
import cycle among its modules, imports inside functions included.

Both checks read the source with `ast` (nothing is imported), so they run in a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nmt_kd"
MAX_FUNCTION_LINES = 80

# Functions allowed to stay longer than MAX_FUNCTION_LINES for now (none since the #17
# refactor). The test fails on an entry that is no longer too long, so it cannot go stale.
TOO_LONG_FOR_NOW: set[str] = set()


def _modules() -> dict[str, Path]:
    """{dotted module name: file} for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def function_lengths(tree: ast.AST) -> dict[str, int]:
    """{qualified name: lines from `def` to the last line of the body} for every function,
    methods and nested functions included."""
    out: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                out[name] = child.end_lineno - child.lineno + 1
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def long_functions(modules: dict[str, Path]) -> dict[str, int]:
    found = {}
    for path in modules.values():
        rel = path.relative_to(PACKAGE).as_posix()
        for name, n in function_lengths(ast.parse(path.read_text(encoding="utf-8"))).items():
            if n > MAX_FUNCTION_LINES:
                found[f"{rel}::{name}"] = n
    return found


def test_no_function_is_longer_than_80_lines():
    found = long_functions(_modules())
    new = {name: n for name, n in found.items() if name not in TOO_LONG_FOR_NOW}
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (split them): {new}"
    fixed = TOO_LONG_FOR_NOW - set(found)
    assert not fixed, f"no longer too long, remove from TOO_LONG_FOR_NOW: {sorted(fixed)}"


def imported_modules(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere (module level, functions,
    conditionals): the most specific known module each import statement names."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 more
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([base] if base else []))
            # `from a import b` may name the module a.b or an attribute of a
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # `import nmt_kd.x.y` of an unknown y: x
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    known = set(modules)
    return {name: imported_modules(ast.parse(path.read_text(encoding="utf-8")), name,
                                   path.name == "__init__.py", known)
            for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_no_import_cycles_among_the_modules():
    graph = import_graph(_modules())
    assert graph["nmt_kd.translate"] >= {"nmt_kd.backends", "nmt_kd.decode_policy"}  # sanity
    found = cycles(graph)
    detail = [{m: sorted(graph[m] & set(c)) for m in c} for c in found]
    assert not found, f"import cycles (module: what it imports within the cycle): {detail}"


def test_the_checks_see_what_they_should():
    src = "def f():\n" + "    x = 1\n" * 80 + "class C:\n    def g(self):\n        def h():\n            pass\n"
    assert function_lengths(ast.parse(src)) == {"f": 81, "C.g": 3, "C.g.h": 2}
    known = {"p", "p.a", "p.b", "p.sub", "p.sub.c"}
    tree = ast.parse("import p.a\ndef f():\n    from p import b, CONST\n    from .. import a\n"
                     "    from . import c\n    import os\n")
    assert imported_modules(tree, "p.sub.c", False, known) == {"p.a", "p.b", "p"}
    assert imported_modules(ast.parse("from . import c"), "p.sub", True, known) == {"p.sub.c"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
