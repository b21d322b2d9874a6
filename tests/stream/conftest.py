"""Fixtures for stream tests: a farm serving a standard and a private vDisk,
on each database kind.

Rules: every stream test runs once per database kind (`db_kind`: sqlite,
postgresql; ids say which), but a costly one (VM boots, long device
cycles) may run on one kind (`on_kind`): the farm's logic runs on both in
the service tests and the cheaper stream tests. A template farm (a data dir and its database) is
built once through the CLI; each test gets a copy: `cp -a` of the data dir,
and for PostgreSQL `CREATE DATABASE ... TEMPLATE`, passed to every command
with `--db`. Copies are dropped at teardown, templates when their scope
ends. Without a reachable PostgreSQL the postgresql variants skip.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Farm, copy_data_dir
from tests.farm.postgres import fresh_postgres_url, unreachable_reason

DB_KINDS = ("sqlite", "postgresql")


def run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a real client; on failure show everything it said."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}"
        )
    return proc


def store_file(farm, vdisk: str):
    """The vDisk's file in the local store (the store layout is fixed)."""
    return farm.data_dir / "store" / vdisk / "base.raw"


# -- database kinds and template farms -----------------------------------------


def on_kind(kind: str) -> pytest.MarkDecorator:
    """Run the marked test (or module, as `pytestmark`) on database KIND
    only. An indirect parameter, so the session's template farms of that
    kind are the ones used (a plain `db_kind` fixture override would reuse
    whichever kind's templates were made last)."""
    return pytest.mark.parametrize("db_kind", [kind], indirect=True)


@pytest.fixture(scope="session", params=DB_KINDS, autouse=True)
def db_kind(request) -> str:
    """The database of every farm of this test: 'sqlite' (a file in the data
    dir) or 'postgresql' (skips if unreachable)."""
    if request.param == "postgresql":
        reason = unreachable_reason()
        if reason:
            pytest.skip(reason)
    return request.param


@contextlib.contextmanager
def new_farm(kind: str, data_dir: Path) -> Iterator[Farm]:
    """An uninitialised farm at DATA_DIR on a new, empty database of KIND
    (the caller runs `init`); its database is dropped on exit."""
    if kind == "sqlite":
        yield Farm(data_dir)
    else:
        with fresh_postgres_url() as url:
            yield Farm(data_dir, url)


@contextlib.contextmanager
def farm_copy(template: Farm, data_dir: Path) -> Iterator[Farm]:
    """A private copy of TEMPLATE (stopped, no connections to its database) at
    DATA_DIR; its server is stopped and its database dropped on exit."""
    copy_data_dir(template.data_dir, data_dir)
    with contextlib.ExitStack() as stack:
        url = None
        if template.db_url is not None:
            url = stack.enter_context(fresh_postgres_url(template=template.db_url))
        farm = Farm(data_dir, url)
        stack.callback(farm.stop)
        yield farm


@pytest.fixture(scope="session")
def empty_template(db_kind, tmp_path_factory) -> Iterator[Farm]:
    """An initialised, empty farm on DB_KIND, made once per kind."""
    with new_farm(db_kind, tmp_path_factory.mktemp(f"empty-{db_kind}") / "data") as farm:
        farm.cli("init")
        yield farm


@pytest.fixture
def farm(tmp_path, empty_template) -> Iterator[Farm]:
    """A fresh initialised farm on this test's database kind (a copy of the
    empty template), stopped at teardown. Overrides tests/conftest.py's."""
    with farm_copy(empty_template, tmp_path / "data") as copy:
        yield copy


@pytest.fixture(scope="session")
def served_template(db_kind, tmp_path_factory, test_image) -> Iterator[Farm]:
    """golden (standard) for pc1 (with a MAC) and pc2; mine (private) for
    solo. Made once per database kind; each test serves its own copy."""
    with new_farm(db_kind, tmp_path_factory.mktemp(f"served-{db_kind}") / "data") as farm:
        farm.cli("init")
        farm.cli("vdisk", "import", "golden", str(test_image), "--mode", "standard")
        farm.cli("vdisk", "import", "mine", str(test_image), "--mode", "private")
        farm.cli("device", "add", "pc1", "--vdisk", "golden", "--mac", "52:54:00:12:34:01")
        farm.cli("device", "add", "pc2", "--vdisk", "golden")
        farm.cli("device", "add", "solo", "--vdisk", "mine")
        yield farm


@pytest.fixture
def serve_copy(tmp_path, served_template) -> Iterator:
    """Start a server over a private copy of the served template:
    `serve_copy(grace=..., lease=...)`; stopped and dropped at teardown."""
    with contextlib.ExitStack() as stack:

        def start(grace: float = 2, lease: float | None = None, extra_args=()) -> Farm:
            farm = stack.enter_context(farm_copy(served_template, tmp_path / "data"))
            farm.start(grace=grace, lease=lease, extra_args=tuple(extra_args))
            return farm

        yield start


@pytest.fixture
def served(serve_copy):
    """A running server (2 s grace) over a copy of the served template."""
    return serve_copy(grace=2)


# -- vDisk versions (tests/stream/test_versions*.py) ---------------------------


def version_rows(farm, vdisk: str) -> list[dict]:
    """`vdfarm version list VDISK --json`, oldest first."""
    import json

    return json.loads(farm.cli("--json", "version", "list", vdisk).stdout)


def version_file(farm, vdisk: str, number: int):
    """The store file of version NUMBER of VDISK (from `version list`)."""
    [row] = [r for r in version_rows(farm, vdisk) if r["number"] == number]
    return farm.data_dir / "store" / vdisk / row["file"]


def flatten(image, out):
    """qemu's own flattening of IMAGE and its backing chain into the raw file OUT."""
    run("qemu-img", "convert", "-O", "raw", str(image), str(out))
    return out


def wait_until(condition, what: str, timeout: float = 30.0, step: float = 0.1):
    """Poll CONDITION until it is true (and return its value); AssertionError
    naming WHAT after TIMEOUT."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(step)


def lock_is_free(farm, vdisk: str) -> bool:
    import json

    locks = json.loads(farm.cli("--json", "lock", "list").stdout)
    return all(r["state"] != "held" for r in locks if r["vdisk"] == vdisk)
