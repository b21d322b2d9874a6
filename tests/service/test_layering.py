"""The service layer's import rule, checked on the import graph (grimp,
which the pinned import-linter brings): only the façade reaches
`vdfarm.service.context`. (That no module imports another in a circle,
here or anywhere in vdfarm, is the "no-circles" import contract of
pyproject.toml, run by scripts/check.sh.)"""

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


def test_only_the_facade_builds_the_services(edges):
    importers = {m for m, imported in edges.items() if FACADE in imported}
    assert importers <= MAY_IMPORT_FACADE
