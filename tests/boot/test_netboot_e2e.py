"""Diskless boot end to end through real dnsmasq: in a network namespace of
the test's own, a real `vdfarm server run` listens on the bridge address,
`vdfarm pxe dnsmasq-config` (no --server: the farm's own server, as `server
list` shows it) configures dnsmasq for full DHCP, and a VM with no disk
(`-boot n`, qemu's built-in iPXE) gets its address from dnsmasq, fetches
its boot script from GET /boot/ipxe, its kernel and initramfs from
GET /boot/files, attaches the network-bootable sample's root over NBD,
writes and reads back, and powers off; the vDisk's file is unchanged
(standard mode).

It needs GET /boot/ipxe (issue 12, built on another branch): until the
server answers that route, it skips saying so, before it builds anything.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.boot.netns import BRIDGE, BRIDGE_ADDRESS, DHCP_RANGE, BootNetwork
from tests.boot.test_dnsmasq_netns import dnsmasq_config, lease_of
from tests.conftest import free_port, sha256
from tests.image.test_netboot import import_sample
from tests.kernel_guest import markers
from vdfarm.image import netboot

BOOT_TIMEOUT = 300  # seconds; PXE + iPXE + kernel + NBD root takes about 20 under TCG
MAC = "52:54:00:fa:12:10"

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not (netboot.NBD_CLIENT.is_file() and shutil.which(netboot.MKFS_EXT4)),
        reason="nbd-client or mkfs.ext4 not installed (scripts/install.sh)",
    ),
]


def start_server(network: BootNetwork, farm, nbd_port: int, api_port: int):
    """`vdfarm server run` inside the namespace, on the bridge address."""
    proc = network.start(
        [
            *farm.base_args(),
            "server",
            "run",
            "--host",
            BRIDGE_ADDRESS,
            "--advertise",
            BRIDGE_ADDRESS,
            "--nbd-port",
            str(nbd_port),
            "--api-port",
            str(api_port),
            "--grace",
            "5",
        ],
        farm.log_path,
    )
    assert network.wait_tcp(api_port) and network.wait_tcp(nbd_port), farm.server_log()[-2000:]
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(30)


def api_paths(network: BootNetwork, api_port: int) -> set[str]:
    """The paths of the server's OpenAPI document."""
    done = network.run(
        ["curl", "-sS", "-m", "20", f"http://{BRIDGE_ADDRESS}:{api_port}/openapi.json"]
    )
    return set(json.loads(done.stdout)["paths"])


def test_a_diskless_vm_boots_the_sample_through_dnsmasq_and_the_farm(boot_network, farm, tmp_path):
    nbd_port, api_port = free_port(), free_port()
    server = start_server(boot_network, farm, nbd_port, api_port)
    if "/boot/ipxe" not in api_paths(boot_network, api_port):
        pytest.skip("the server has no GET /boot/ipxe yet (issue 12, built on another branch)")
    stop(server)

    built = netboot.build(tmp_path / "netboot", size_mib=32)
    import_sample(farm, built)
    farm.cli("device", "add", "pc1", "--vdisk", "nb", "--mac", MAC)
    vdisk_file = farm.data_dir / "store" / "nb" / "base.raw"
    before = sha256(vdisk_file)
    server = start_server(boot_network, farm, nbd_port, api_port)

    out = tmp_path / "pxe"
    dnsmasq_config(
        None,
        "--interface",
        BRIDGE,
        "--range",
        DHCP_RANGE,
        "--write",
        str(out),
        cli=farm.base_args(),
    )
    url = f"http://{BRIDGE_ADDRESS}:{api_port}/boot/ipxe?mac=${{netX/mac}}"
    assert f"dhcp-boot=tag:ipxe,{url}" in (out / "dnsmasq.conf").read_text()
    _, log, leases = boot_network.dnsmasq(out / "dnsmasq.conf", tmp_path)

    with boot_network.start_vm(MAC, "pxe-e2e") as machine:
        result = machine.wait(BOOT_TIMEOUT)
    serial = result.serial_output
    found = markers(serial)
    assert "ERROR" not in found and "ROOT-DONE" in found, serial
    assert not result.timed_out and result.exit_code == 0, result.qemu_stderr
    address = lease_of(leases, MAC)  # dnsmasq leased it: to iPXE, then to the initramfs
    assert address is not None and found["NETBOOT-NET"].startswith(f"{address}/"), serial
    assert f"bootfile name: {url}" in log.read_text()
    assert found["ROOT-UP"].endswith("/dev/nbd0 ext4"), serial
    assert found["ROOT-READBACK"].startswith("ok"), serial
    stop(server)
    assert sha256(vdisk_file) == before  # standard mode: the writes went to pc1's cache
    assert "device pc1" in farm.server_log()
