"""Measures the layering of vdfarm from its own imports (used for the issue's
before/after figures; not a check: scripts/check.sh enforces the rules).

Prints: modules that import each other in a circle (strongly connected
components of the module graph), imports that run from a lower floor to a
higher one (or sideways between the stream and the service), and the largest
modules by lines. Floors, from the ground up, as docs/architecture.md draws
them. Usage: python scripts/architecture_metrics.py [PACKAGE_DIR_PARENT]
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp

# package -> floor (higher floors may import lower ones, never the reverse)
FLOORS = {
    "nbd": 1,
    "block": 1,
    "store": 2,
    "farm": 2,
    "image": 2,
    "service": 3,
    "stream": 3,
    "api": 4,
    "client": 4,
    "daemon": 5,
    "demo": 5,
    "cli": 6,
    "__main__": 7,
}
SIBLINGS_APART = {("stream", "service"), ("service", "stream")}


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def circles(graph: grimp.ImportGraph) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if not w.startswith("vdfarm"):
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(comp)

    for module in sorted(graph.modules):
        if module.startswith("vdfarm") and module not in index:
            visit(module)
    return found


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    graph = grimp.build_graph("vdfarm")
    comps = circles(graph)
    print(f"modules in import circles: {sum(len(c) for c in comps)} in {len(comps)} circle(s)")
    for comp in comps:
        print("  circle:", ", ".join(sorted(comp)))
    upward = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            a, b = room(importer), room(imported)
            if not imported.startswith("vdfarm.") or a is None or b is None or a == b:
                continue
            fa, fb = FLOORS.get(a), FLOORS.get(b)
            if fa is None or fb is None:
                continue
            if fb > fa or (a, b) in SIBLINGS_APART:
                upward.append((importer, imported))
    print(f"imports from a lower floor to a higher one (or stream <-> service): {len(upward)}")
    for importer, imported in upward:
        print(f"  {importer} -> {imported}")
    sizes = sorted(
        (
            (len(p.read_text().splitlines()), str(p.relative_to(root)))
            for p in (root / "vdfarm").rglob("*.py")
        ),
        reverse=True,
    )
    print("largest modules:", ", ".join(f"{name} {lines}" for lines, name in sizes[:3]))


if __name__ == "__main__":
    main()
