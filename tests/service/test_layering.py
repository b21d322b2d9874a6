"""The service layer's import rules, checked on the import graph (grimp,
which the pinned import-linter brings): no module of vdfarm.service imports
another in a circle (imports under TYPE_CHECKING count), and only the
façade reaches `vdfarm.service.context`."""

from __future__ import annotations

import pytest

grimp = pytest.importorskip("grimp")

PACKAGE = "vdfarm.service"
FACADE = f"{PACKAGE}.context"
MAY_IMPORT_FACADE = {PACKAGE}  # the package's lazy `Farm` attribute


@pytest.fixture(scope="module")
def edges():
    graph = grimp.build_graph("vdfarm", include_external_packages=False)
    modules = {m for m in graph.modules if m == PACKAGE or m.startswith(PACKAGE + ".")}
    return {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}


def _cycles(edges):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_in_the_service_layer(edges):
    assert _cycles(edges) == []


def test_only_the_facade_builds_the_services(edges):
    importers = {m for m, imported in edges.items() if FACADE in imported}
    assert importers <= MAY_IMPORT_FACADE
