"""`vdfarm demo` end to end: the quick start's main job."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vdfarm.image import sample

pytestmark = pytest.mark.vm


def test_demo_boots_a_vm_from_the_farm_and_is_idempotent(tmp_path):
    data = tmp_path / "demo"
    argv = [sys.executable, "-m", "vdfarm", "--data-dir", str(data), "demo"]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "VDFARM-BOOT-OK pc1" in first.stdout
    assert "VDFARM-PATTERN-READBACK ok pc1" in first.stdout
    assert "nbdinfo nbd://127.0.0.1:" in first.stdout
    # the vDisk is untouched by the guest's write (standard mode)
    vdisk = data / "store" / "golden" / "base.raw"
    with open(vdisk, "rb") as f:
        f.seek(sample.pattern_offset(vdisk.stat().st_size))
        assert f.read(sample.PATTERN_BLOCK_SIZE) == bytes(sample.PATTERN_BLOCK_SIZE)
    # a second run reuses the data directory
    second = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "vdisk import" not in second.stdout
