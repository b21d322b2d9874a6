"""VMs (qemu-system-x86_64, TCG) boot the sample image from the farm.

Every guest write is checked from outside the VM: in the device's write
cache (standard mode) or in the vDisk file (private mode).
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import sha256
from tests.stream.conftest import on_kind, store_file
from vdfarm.image import sample, vm

# VM boots are the suite's main cost: these run on PostgreSQL only (the
# farm's logic runs on both database kinds in the tests without a VM).
pytestmark = [pytest.mark.vm, on_kind("postgresql")]


@pytest.fixture(scope="module")
def sample_image(tmp_path_factory):
    return sample.build(tmp_path_factory.mktemp("img") / "sample.raw", size_mib=64)


def cache_file(farm, device: str):
    import json

    dev = json.loads(farm.cli("--json", "device", "show", device).stdout)
    return farm.data_dir / "cache" / f"device-{dev['id']}.wcache"


def read_pattern_block(path, disk_size: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(sample.pattern_offset(disk_size))
        return f.read(sample.PATTERN_BLOCK_SIZE)


def test_two_vms_boot_one_standard_vdisk_at_once(farm, sample_image):
    farm.cli("vdisk", "import", "golden", str(sample_image), "--mode", "standard")
    farm.cli("device", "add", "vm1", "--vdisk", "golden")
    farm.cli("device", "add", "vm2", "--vdisk", "golden")
    vdisk = store_file(farm, "golden")
    before = sha256(vdisk)
    size = vdisk.stat().st_size
    farm.start(grace=5)
    # -no-shutdown: after the guest powers off, qemu stays (connection open),
    # so the write cache can be inspected before the session ends.
    vms = [vm.start(farm.uri(name), name, extra_args=("-no-shutdown",)) for name in ("vm1", "vm2")]
    try:
        for handle in vms:
            assert handle.wait_for("VDFARM-DONE", timeout=180), handle.serial_text()
        for handle, name in zip(vms, ("vm1", "vm2"), strict=True):
            fields = vm.parse_serial(handle.serial_text())
            assert fields.booted and fields.reported_id == name
            assert fields.readback == "ok", handle.serial_text()
            assert fields.pattern_before == "empty", "a device saw another device's write"
            cached = read_pattern_block(cache_file(farm, name), size)
            assert cached == sample.expected_pattern(name), "the guest's write never arrived"
    finally:
        for handle in vms:
            handle.close()
    assert sha256(vdisk) == before, "standard mode modified the vDisk"


def test_private_vdisk_keeps_what_the_guest_wrote_across_boots(farm, sample_image):
    farm.cli("vdisk", "import", "priv", str(sample_image), "--mode", "private")
    farm.cli("device", "add", "pvm", "--vdisk", "priv")
    vdisk = store_file(farm, "priv")
    size = vdisk.stat().st_size
    farm.start(grace=5)

    first = vm.boot(farm.uri("pvm"), "boot1", timeout=180)
    assert first.ok, first.serial_output
    assert first.pattern_before == "empty"
    assert read_pattern_block(vdisk, size) == sample.expected_pattern("boot1")

    time.sleep(0.5)  # qemu's clean disconnect has ended the session
    second = vm.boot(farm.uri("pvm"), "boot2", timeout=180)
    assert second.ok, second.serial_output
    assert second.pattern_before.startswith("VDFARM-PATTERN boot1")
    assert read_pattern_block(vdisk, size) == sample.expected_pattern("boot2")
