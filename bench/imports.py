"""``python -m bench.imports [DIR]``: the package's import graph and its circles.

Every ``import``/``from ... import`` of a ``fastapi_dbpool`` module by another, type-checking
imports included, read from the source (nothing is run); the circles are the graph's strongly
connected components of more than one module.
"""

import ast
import sys
from pathlib import Path

PACKAGE = "fastapi_dbpool"


def graph(root: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports."""
    modules = {
        ".".join(path.relative_to(root).with_suffix("").parts): path
        for path in (root / PACKAGE).rglob("*.py")
    }
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name and not target.endswith("__init__"):
                    edges[name].add(target)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    edges = graph(root)
    found = circles(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports, {len(found)} circles")
    for component in found:
        print(f"  circle of {len(component)}: {', '.join(component)}")


if __name__ == "__main__":
    main()
