"""Check ckptsurgery's import graph: no cycles, no import against the pipeline's direction.

Usage: python scripts/import_graph.py [--lazy]   (exit 1 on a problem)

Reads the source with ``ast`` (nothing is imported).  Module-level imports
make the graph; ``--lazy`` adds the imports made inside functions too.
Layers, lowest first: a module may import its own layer or lower ones.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ckptsurgery"

#: (prefix of a module path, layer).  The longest matching prefix wins.
LAYERS = [
    ("_tf", 0), ("errors", 0), ("dtypes", 0), ("options", 0), ("values", 0), ("text", 0),
    ("io", 1),
    ("transforms", 2), ("merge_methods", 2),
    ("plan", 3),
    ("execute", 4), ("report", 4), ("recipe", 4),
    ("api", 5),
    ("cli", 7),
    ("__init__", 8), ("__main__", 8),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise SystemExit(f"no layer for module {module!r}: add it to LAYERS")
    return dict(LAYERS)[best]


def imports(path: Path, lazy: bool) -> set[str]:
    """Modules of the package that ``path`` imports (relative or absolute)."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    for node in ast.walk(tree):  # imports for type checkers only are not imports at run time
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            node.body = []
    nodes = ast.walk(tree) if lazy else iter(tree.body)
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "ckptsurgery":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                candidate = ".".join([*target, alias.name])
                found.add(candidate if known(candidate) else ".".join(target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "ckptsurgery":
                    found.add(".".join(alias.name.split(".")[1:]))
    return {m for m in found if m and m != module_name(path)}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def known(module: str) -> bool:
    return module in MODULES


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    lazy = "--lazy" in argv
    graph = {name: {m for m in imports(path, lazy) if known(m)} for name, path in MODULES.items()}
    # a package's __init__ importing its own modules is the package, not a cycle
    found = cycles({v: {w for w in ws if not v or not w.startswith(v + ".")} for v, ws in graph.items()})
    backward = [(v, w) for v, ws in sorted(graph.items()) for w in sorted(ws)
                if layer(w) > layer(v) and not w.startswith(v + ".")]
    kind = "module-level and lazy" if lazy else "module-level"
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} {kind} imports")
    for component in found:
        print("cycle:", " <-> ".join(component))
    for v, w in backward:
        print(f"against the pipeline: {v} (layer {layer(v)}) imports {w} (layer {layer(w)})")
    if not found and not backward:
        print("no cycles, no import against the pipeline's direction")
    return 1 if found or backward else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
