"""Fixtures for stream tests: a farm serving a standard and a private vDisk."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import Farm, copy_data_dir


def run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a real client; on failure show everything it said."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): "
                             f"{proc.stdout}{proc.stderr}")
    return proc


def store_file(farm, vdisk: str):
    """The vDisk's file in the local store (the store layout is fixed)."""
    return farm.data_dir / "store" / vdisk / "base.raw"


@pytest.fixture(scope="session")
def served_template(tmp_path_factory, test_image):
    """golden (standard) for pc1 (with a MAC) and pc2; mine (private) for
    solo. Made once; each test serves its own copy."""
    farm = Farm(tmp_path_factory.mktemp("served") / "data")
    farm.cli("init")
    farm.cli("vdisk", "import", "golden", str(test_image), "--mode", "standard")
    farm.cli("vdisk", "import", "mine", str(test_image), "--mode", "private")
    farm.cli("device", "add", "pc1", "--vdisk", "golden", "--mac", "52:54:00:12:34:01")
    farm.cli("device", "add", "pc2", "--vdisk", "golden")
    farm.cli("device", "add", "solo", "--vdisk", "mine")
    return farm.data_dir


@pytest.fixture
def serve_copy(tmp_path, served_template):
    """Start a server over a private copy of the served template:
    `serve_copy(grace=..., lease=...)`; stopped at teardown."""
    started: list[Farm] = []

    def start(grace: float = 2, lease: float | None = None) -> Farm:
        copy_data_dir(served_template, tmp_path / "data")
        farm = Farm(tmp_path / "data")
        started.append(farm)
        farm.start(grace=grace, lease=lease)
        return farm

    yield start
    for farm in started:
        farm.stop()


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
    """Poll CONDITION until it is true; AssertionError naming WHAT after TIMEOUT."""
    import time
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(step)


def lock_is_free(farm, vdisk: str) -> bool:
    import json
    locks = json.loads(farm.cli("--json", "lock", "list").stdout)
    return all(r["state"] != "held" for r in locks if r["vdisk"] == vdisk)
