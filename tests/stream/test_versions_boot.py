"""VMs (qemu-system-x86_64, TCG) boot the sample image through a vDisk's versions.

One standard vDisk, three devices: vmnt (maintenance), vtst (test), vprod
(production). The maintenance VM's pattern write must land in the open
maintenance version — checked from outside, with qemu-img convert of the
chain — while production still boots the original; each promotion then
shows the pattern to the next device type, and a revert takes it away again.
Every file of the store passes qemu-img check at the end. Five boots.
"""

from __future__ import annotations

import pytest

from tests.conftest import sha256
from tests.service.helpers import assert_qemu_clean
from tests.stream.conftest import (
    flatten,
    lock_is_free,
    on_kind,
    version_file,
    version_rows,
    wait_until,
)
from vdfarm.image import sample, vm

# Five boots, the suite's costliest test: it runs on SQLite only (the
# versions' logic runs on both database kinds in test_versions.py).
pytestmark = [pytest.mark.vm, on_kind("sqlite")]

VDISK = "bootgold"
BOOT_TIMEOUT = 180


@pytest.fixture(scope="module")
def sample_image(tmp_path_factory):
    return sample.build(tmp_path_factory.mktemp("img") / "sample.raw", size_mib=64)


def pattern_block(image, size: int, tmp_path) -> bytes:
    """The guest's pattern block as qemu flattens IMAGE's chain."""
    flat = flatten(image, tmp_path / f"flat-{image.name}.raw")
    try:
        with open(flat, "rb") as fh:
            fh.seek(sample.pattern_offset(size))
            return fh.read(sample.PATTERN_BLOCK_SIZE)
    finally:
        flat.unlink()


def boot(farm, device: str, boot_id: str) -> vm.BootResult:
    result = vm.boot(farm.uri(device), boot_id, timeout=BOOT_TIMEOUT)
    assert result.ok, result.serial_output
    return result


def shown(boot_id: str) -> str:
    """What a guest prints as pattern_before after BOOT_ID's pattern was written."""
    return sample.expected_pattern(boot_id).rstrip(b"\0").decode()


def test_maintenance_boot_reaches_test_then_production(farm, sample_image, tmp_path):
    farm.cli("vdisk", "import", VDISK, str(sample_image), "--mode", "standard")
    for device, device_type in (("vmnt", "maintenance"), ("vtst", "test"), ("vprod", "production")):
        farm.cli("device", "add", device, "--vdisk", VDISK, "--type", device_type)
    farm.cli("version", "new", VDISK)
    store = farm.data_dir / "store" / VDISK
    base, v1 = store / "base.raw", version_file(farm, VDISK, 1)
    size, base_sha = base.stat().st_size, sha256(base)
    farm.start(grace=1)

    # The maintenance VM writes its pattern into version 1 and stays
    # connected (-no-shutdown) while a production VM boots the original.
    with vm.start(farm.uri("vmnt"), "maint1", extra_args=("-no-shutdown",)) as maint:
        assert maint.wait_for("VDFARM-DONE", timeout=BOOT_TIMEOUT), maint.serial_text()
        fields = vm.parse_serial(maint.serial_text())
        assert fields.reported_id == "maint1" and fields.readback == "ok", maint.serial_text()
        assert fields.pattern_before == "empty"
        # the guest's write was flushed (dd conv=fsync): it is in v1's file now
        assert pattern_block(v1, size, tmp_path) == sample.expected_pattern("maint1")
        assert not lock_is_free(farm, VDISK)
        assert boot(farm, "vprod", "prod1").pattern_before == "empty"
    wait_until(lambda: lock_is_free(farm, VDISK), "the maintenance session ended")
    assert pattern_block(v1, size, tmp_path) == sample.expected_pattern("maint1")
    assert sha256(base) == base_sha, "the maintenance boot wrote into the base"

    farm.cli("version", "promote", VDISK, "--to", "test")
    sealed = {r["number"]: r["sha256"] for r in version_rows(farm, VDISK)}[1]
    assert sealed == sha256(v1)
    assert boot(farm, "vtst", "test1").pattern_before == shown("maint1")

    farm.cli("version", "promote", VDISK, "--to", "production")
    assert boot(farm, "vprod", "prod2").pattern_before == shown("maint1")

    farm.cli("version", "revert", VDISK)  # production → test: production boots the base again
    assert boot(farm, "vprod", "prod3").pattern_before == "empty"

    # Standard devices wrote only into their write caches.
    assert sha256(v1) == sealed and sha256(base) == base_sha
    assert pattern_block(v1, size, tmp_path) == sample.expected_pattern("maint1")
    assert_qemu_clean(store)
