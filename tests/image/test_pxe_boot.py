"""Diskless boot, end to end, on a farm of two real servers: qemu VMs with
no disk at all (`-boot n`, TCG) whose network card's iPXE ROM gets
`bootfile=http://10.0.2.2:PORT/boot/ipxe?mac=${net0/mac}` from qemu's
user-network DHCP, PORT being server A's API; A and B are `vdfarm server
run` processes on 127.0.0.1 sharing one PostgreSQL database, each store
holding the network-bootable sample's vDisk, both advertising 10.0.2.2.

iPXE fetches its script from A (A's login chose the server), the kernel
and the initramfs from A; the initramfs attaches the root over NBD from
the chosen server; init prints its markers and reads back a write; the
vDisk files are unchanged (standard mode); `device show` has every boot
stage, in order. Before the VMs, A tells an unknown MAC so.

Spread: A is in the devices' subnet and the vDisk has best-effort subnet
affinity, so login prefers A for every device; A's max-booting is 1. The
first VM logs in (its reservation, then its session, count as booting on
A: the boot phase is set long enough to cover the test), the second starts
right after and must stream from B, only because of max-booting. The two
VMs run at the same time — one pair of VM boots for all of it.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.conftest import sha256
from tests.farm.postgres import fresh_postgres_url
from tests.image.test_netboot import BOOT_TIMEOUT, built, import_sample  # noqa: F401 (fixture)
from tests.kernel_guest import HOST_FROM_GUEST, markers
from tests.stream.cluster import Cluster, ClusterServer
from vdfarm.image import netboot, vm

pytestmark = pytest.mark.skipif(
    not netboot.NBD_CLIENT.is_file(), reason="nbd-client not installed (scripts/install.sh)"
)

MACS = {"pc1": "52:54:00:12:34:78", "pc2": "52:54:00:12:34:79"}
STAGES = ["ipxe", "kernel", "streaming", "up"]
UP_WAIT = 30  # seconds for the write-cache report (every 2 s) to say `up`
BOOT_PHASE = 900  # seconds a connected device counts as booting: the whole test


def device_show(server: ClusterServer, name: str) -> dict:
    return json.loads(server.cli("device", "show", name, "--json").stdout)


def wait_stage(server: ClusterServer, name: str, stage: str, timeout: float) -> dict:
    """`device show NAME` once its boot has reached STAGE (or at TIMEOUT)."""
    deadline = time.monotonic() + timeout
    shown = device_show(server, name)
    while not (shown["boot_stages"] or {}).get(stage) and time.monotonic() < deadline:
        time.sleep(0.5)
        shown = device_show(server, name)
    return shown


@pytest.fixture
def two_servers(built, tmp_path):  # noqa: F811
    """Servers a and b (not started) on one fresh PostgreSQL database, the
    sample imported as vDisk nb with its boot files, copied into b's store;
    devices pc1 and pc2 by MAC."""
    with fresh_postgres_url() as url:
        farm = Cluster(tmp_path, url, ["a", "b"])
        try:
            farm.init()
            a = farm.first
            import_sample(a, built)
            farm.copy_store("nb")
            for name, mac in MACS.items():
                a.cli("device", "add", name, "--vdisk", "nb", "--mac", mac)
            yield farm
        finally:
            farm.stop()


@pytest.mark.vm
@pytest.mark.timeout(3 * BOOT_TIMEOUT)
def test_two_diskless_vms_pxe_boot_at_once_and_spread_over_two_servers(built, two_servers):  # noqa: F811
    farm = two_servers
    a, b = farm.servers["a"], farm.servers["b"]
    # Login would put every device on A (its subnet holds the devices'
    # address, 127.0.0.1 as qemu's user network connects from the host)...
    a.cli("vdisk", "set", "nb", "--subnet-affinity", "best-effort")
    a.cli("server", "set", "a", "--subnet", "127.0.0.0/8", "--max-booting", "1")
    a.cli("farm", "set", "--boot-phase", str(BOOT_PHASE))
    vdisk_files = [s.data_dir / "store" / "nb" / "base.raw" for s in (a, b)]
    before = [sha256(path) for path in vdisk_files]
    farm.start("--advertise", HOST_FROM_GUEST)

    unknown = httpx.get(
        f"http://127.0.0.1:{a.api_port}/boot/ipxe", params={"mac": "52:54:00:00:00:01"}, timeout=30
    )
    assert unknown.status_code == 200 and unknown.text.startswith("#!ipxe\n"), unknown.text
    assert "echo vdfarm: unknown MAC 52:54:00:00:00:01" in unknown.text
    assert "chain --autofree http://127.0.0.1" in unknown.text

    bootfile = f"http://{HOST_FROM_GUEST}:{a.api_port}/boot/ipxe?mac=${{net0/mac}}"
    results = {}
    with vm.start_netboot(MACS["pc1"], bootfile, "pxe1") as first:
        # ...so the first to log in gets A: start the second once it has.
        shown = wait_stage(a, "pc1", "ipxe", BOOT_TIMEOUT)
        assert shown["boot_stages"]["ipxe"], first.serial_text() + a.log()[-3000:]
        with vm.start_netboot(MACS["pc2"], bootfile, "pxe2") as second:
            results["pc1"] = first.wait(BOOT_TIMEOUT)
            results["pc2"] = second.wait(BOOT_TIMEOUT)

    streamed_by = {"pc1": a, "pc2": b}  # pc2: A was at its max-booting
    for name, result in results.items():
        serial = result.serial_output
        found = markers(serial)
        logs = a.log()[-3000:] + b.log()[-3000:]
        assert "ERROR" not in found and "ROOT-DONE" in found, serial + logs
        assert not result.timed_out and result.exit_code == 0, result.qemu_stderr
        server = streamed_by[name]
        assert found["NETBOOT-START"] == name  # vdfarm.id from the script
        assert found["NETBOOT-SERVER"] == f"{HOST_FROM_GUEST}:{server.nbd_port}", serial
        assert found["NETBOOT-NET"].startswith("10.0.2.15/"), serial
        assert found["NETBOOT-ATTACH"] == f"{name} {32 << 20}"  # the export the script named
        assert found["ROOT-UP"] == f"{name} /dev/nbd0 ext4"
        assert found["ROOT-BEFORE"] == ""
        assert found["ROOT-READBACK"] == f"ok {name}"
        other = b if server is a else a
        assert f"device {name} streaming" in server.log()
        assert f"device {name} streaming" not in other.log()

    for name in MACS:
        shown = wait_stage(b, name, "up", UP_WAIT)
        assert list(shown["boot_stages"]) == STAGES
        times = [shown["boot_stages"][s] for s in STAGES]
        assert None not in times and times == sorted(times), shown
        assert shown["stage"] == "up" and shown["stuck"] is False, shown
    human = a.cli("device", "show", "pc2").stdout
    assert "boot stage" in human and "up since" in human

    # Standard mode: the guests' writes went to their write caches, not the vDisk.
    farm.stop()
    assert [sha256(path) for path in vdisk_files] == before
