"""Diskless boot, end to end: a qemu VM with no disk at all (`-boot n`,
TCG) whose network card's iPXE ROM gets `bootfile=http://10.0.2.2:PORT/
boot/ipxe?mac=${net0/mac}` from qemu's user-network DHCP, and boots the
network-bootable sample from a real `vdfarm server run` on 127.0.0.1:
iPXE fetches its script (the login chose the server), the kernel and the
initramfs from vdfarm; the initramfs attaches the root over NBD from that
server; init prints its markers and reads back a write; the vDisk file is
unchanged (standard mode); `device show` has every boot stage, in order.
One VM boot for all of it. Before it, the same server tells an unknown
MAC so (no VM needed for that)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import free_port, sha256
from tests.image.test_netboot import BOOT_TIMEOUT, built  # noqa: F401 (fixture)
from tests.kernel_guest import HOST_FROM_GUEST, markers
from vdfarm.image import netboot, vm

pytestmark = pytest.mark.skipif(
    not netboot.NBD_CLIENT.is_file(), reason="nbd-client not installed (scripts/install.sh)"
)

MAC = "52:54:00:12:34:78"
STAGES = ["ipxe", "kernel", "streaming", "up"]
UP_WAIT = 30  # seconds for the write-cache report (every 2 s) to say `up`


def device_show(farm, name: str) -> dict:
    return json.loads(farm.cli("device", "show", name, "--json").stdout)


@pytest.mark.vm
def test_a_diskless_vm_pxe_boots_the_sample_from_the_farm(built, farm):  # noqa: F811
    farm.cli("vdisk", "import", "nb", str(built.root))
    farm.cli("device", "add", "pc1", "--vdisk", "nb", "--mac", MAC)
    farm.cli(
        "vdisk",
        "boot",
        "nb",
        "--kernel",
        str(built.kernel),
        "--initrd",
        str(built.initrd),
        "--cmdline",
        built.cmdline,
    )
    vdisk_file = farm.data_dir / "store" / "nb" / "base.raw"
    before = sha256(vdisk_file)
    api_port = free_port()
    farm.start(extra_args=("--api-port", str(api_port), "--advertise", HOST_FROM_GUEST))

    unknown = httpx.get(
        f"http://127.0.0.1:{api_port}/boot/ipxe", params={"mac": "52:54:00:00:00:01"}, timeout=30
    )
    assert unknown.status_code == 200 and unknown.text.startswith("#!ipxe\n"), unknown.text
    assert "echo vdfarm: unknown MAC 52:54:00:00:00:01" in unknown.text
    assert "chain --autofree http://127.0.0.1" in unknown.text

    bootfile = f"http://{HOST_FROM_GUEST}:{api_port}/boot/ipxe?mac=${{net0/mac}}"
    with vm.start_netboot(MAC, bootfile, "pxe1") as machine:
        result = machine.wait(BOOT_TIMEOUT)
    serial = result.serial_output
    found = markers(serial)
    log = farm.server_log()
    assert "ERROR" not in found and "ROOT-DONE" in found, serial + log[-3000:]
    assert not result.timed_out and result.exit_code == 0, result.qemu_stderr
    assert found["NETBOOT-START"] == "pc1"  # vdfarm.id from the script
    assert found["NETBOOT-NET"].startswith("10.0.2.15/"), serial
    assert found["NETBOOT-ATTACH"] == f"pc1 {32 << 20}"  # the export the script named
    assert found["ROOT-UP"] == "pc1 /dev/nbd0 ext4"
    assert found["ROOT-BEFORE"] == ""
    assert found["ROOT-READBACK"] == "ok pc1"
    assert "device pc1" in log  # streamed by this server, the one login chose

    deadline = time.monotonic() + UP_WAIT
    shown = device_show(farm, "pc1")
    while shown["stage"] != "up" and time.monotonic() < deadline:
        time.sleep(0.5)
        shown = device_show(farm, "pc1")
    assert list(shown["boot_stages"]) == STAGES
    times = [shown["boot_stages"][s] for s in STAGES]
    assert None not in times and times == sorted(times), shown
    assert shown["stage"] == "up" and shown["stuck"] is False, shown
    human = farm.cli("device", "show", "pc1").stdout
    assert "boot stage" in human and "up since" in human

    # Standard mode: the guest's writes went to pc1's write cache, not the vDisk.
    farm.stop()
    assert sha256(vdisk_file) == before
