"""Fixtures for stream tests: a farm serving a standard and a private vDisk."""

from __future__ import annotations

import subprocess

import pytest


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


@pytest.fixture
def served(farm, test_image):
    """golden (standard) for pc1 (with a MAC) and pc2; mine (private) for solo."""
    farm.cli("vdisk", "import", "golden", str(test_image), "--mode", "standard")
    farm.cli("vdisk", "import", "mine", str(test_image), "--mode", "private")
    farm.cli("device", "add", "pc1", "--vdisk", "golden", "--mac", "52:54:00:12:34:01")
    farm.cli("device", "add", "pc2", "--vdisk", "golden")
    farm.cli("device", "add", "solo", "--vdisk", "mine")
    farm.start(grace=2)
    return farm
