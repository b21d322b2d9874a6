"""Real dnsmasq running the configuration `vdfarm pxe dnsmasq-config`
wrote, in a network namespace of the test's own (a bridge, a diskless VM's
tap; tests/boot/netns.py), and a VM with no disk (`-boot n`, qemu's
built-in iPXE ROM) booting from it:

- full DHCP, two farm servers (the first one down): dnsmasq leases the VM
  an address of the range and sends its iPXE to the chain script, which it
  serves by TFTP; the script skips the dead server, asks the second for
  /boot/ipxe with the VM's MAC, and tries again after its pause. The TFTP
  root serves Debian's loaders (as a BIOS PXE ROM would fetch
  undionly.kpxe) and nothing outside it.
- proxy-DHCP beside the site's own DHCP server (a second dnsmasq that only
  hands out addresses): the VM's address comes from the site, its boot URL
  (one server) or the chain script (two, the first down) from vdfarm's
  proxy, and the config's subnet from the interface itself.

Until a farm server answers GET /boot/ipxe, an HTTP recorder stands in for
the servers and the tests check which URL iPXE fetched; the end-to-end
boot through a real `vdfarm server run` (test_netboot_e2e.py) waits for the
endpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.boot.netns import (
    BRIDGE,
    BRIDGE_ADDRESS,
    DHCP_RANGE,
    DNSMASQ,
    RECORDER,
    BootNetwork,
)
from tests.conftest import VDFARM, free_port
from vdfarm.boot.dnsmasq import IPXE_DIR

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not (os.path.exists(DNSMASQ) and os.path.isfile(f"{IPXE_DIR}/undionly.kpxe")),
        reason="dnsmasq or Debian's ipxe not installed (scripts/install.sh --test)",
    ),
]

REQUEST_TIMEOUT = 180  # seconds for the VM's iPXE to reach the recorder (about 10 under TCG)
NO_BOOT = "No bootable device"
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("VDFARM_")}


def dnsmasq_config(
    network: BootNetwork | None, *args: str, cli: Sequence[str] = VDFARM
) -> subprocess.CompletedProcess:
    """`vdfarm pxe dnsmasq-config ARGS` through CLI (another data dir's,
    say), inside NETWORK's namespace if given; it must succeed."""
    argv = [*cli, "pxe", "dnsmasq-config", *args]
    if network is not None:
        argv = network.argv(argv)
    done = subprocess.run(argv, capture_output=True, text=True, env=CLEAN_ENV, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def start_recorder(network: BootNetwork, workdir: Path) -> tuple[int, Path]:
    """The HTTP recorder on the bridge address; its port and request log."""
    port, requests = free_port(), workdir / "requests.log"
    requests.touch()
    network.start(
        [sys.executable, str(RECORDER), BRIDGE_ADDRESS, str(port), str(requests)],
        workdir / "recorder.out",
    )
    assert network.wait_tcp(port)
    return port, requests


def wait_for_requests(requests: Path, count: int, machine, timeout: float) -> list[str]:
    """The first COUNT request paths the recorder logged (fewer if TIMEOUT
    passes or the VM exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and machine.running():
        got = requests.read_text().splitlines()
        if len(got) >= count:
            return got[:count]
        if NO_BOOT in machine.serial_text():  # the BIOS gave up: nothing more will come
            break
        time.sleep(0.2)
    return requests.read_text().splitlines()


def lease_of(leases: Path, mac: str) -> str | None:
    """The address dnsmasq's lease file gives MAC, if any."""
    for line in leases.read_text().splitlines() if leases.exists() else []:
        fields = line.split()
        if len(fields) >= 3 and fields[1].lower() == mac:
            return fields[2]
    return None


def tftp(network: BootNetwork, name: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        network.argv(
            ["curl", "-sS", "-m", "20", "-o", str(out), f"tftp://{BRIDGE_ADDRESS}/{name}"]
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_full_dhcp_serves_the_loaders_and_chains_through_the_servers(boot_network, tmp_path):
    port, requests = start_recorder(boot_network, tmp_path)
    dead = free_port()  # nothing listens there: the first server is down
    out = tmp_path / "pxe"
    dnsmasq_config(
        None,
        "--interface",
        BRIDGE,
        "--range",
        DHCP_RANGE,
        "--server",
        f"http://{BRIDGE_ADDRESS}:{dead}",
        "--server",
        f"http://{BRIDGE_ADDRESS}:{port}",
        "--write",
        str(out),
    )
    _, log, leases = boot_network.dnsmasq(out / "dnsmasq.conf", tmp_path)

    # TFTP: the loaders a BIOS or UEFI PXE ROM fetches, the chain script, nothing else.
    for name, source in (
        ("undionly.kpxe", Path(IPXE_DIR, "undionly.kpxe")),
        ("ipxe.efi", Path(IPXE_DIR, "ipxe.efi")),
        ("vdfarm.ipxe", out / "vdfarm.ipxe"),
    ):
        got = tftp(boot_network, name, tmp_path / name)
        assert got.returncode == 0, got.stderr
        assert (tmp_path / name).read_bytes() == source.read_bytes(), name
    for outside in ("../dnsmasq.log", "/etc/passwd", "dnsmasq.leases"):
        assert tftp(boot_network, outside, tmp_path / "outside").returncode != 0, outside

    mac = "52:54:00:fa:12:01"
    with boot_network.start_vm(mac, "pxe-full") as machine:
        # Two rounds of the chain script: the second comes after its pause.
        got = wait_for_requests(requests, 2, machine, REQUEST_TIMEOUT)
        serial = machine.serial_text()
    assert got == ["/boot/ipxe?mac=52%3A54%3A00%3Afa%3A12%3A01"] * 2, (got, serial)
    address = lease_of(leases, mac)
    assert address is not None and address.startswith("10.213.0.1"), leases.read_text()
    assert 100 <= int(address.rsplit(".", 1)[1]) <= 150
    dhcp_log = log.read_text()
    assert "bootfile name: vdfarm.ipxe" in dhcp_log
    assert f"sent {out}/vdfarm.ipxe to {address}" in dhcp_log
    assert f"asking http://{BRIDGE_ADDRESS}:{dead} for this device's boot script" in serial


@pytest.mark.parametrize("several", [False, True], ids=["one-server-url", "two-servers-script"])
def test_proxy_dhcp_beside_the_sites_dhcp_server(boot_network, tmp_path, several):
    port, requests = start_recorder(boot_network, tmp_path)
    site_leases = boot_network.site_dhcp(tmp_path)
    out = tmp_path / "pxe"
    servers = [f"http://{BRIDGE_ADDRESS}:{port}"]
    if several:  # a first server that is down: iPXE gets vdfarm.ipxe by TFTP
        servers.insert(0, f"http://{BRIDGE_ADDRESS}:{free_port()}")
    # Run where the bridge is: with no --proxy-for, the subnet is the interface's.
    dnsmasq_config(
        boot_network,
        "--interface",
        BRIDGE,
        *[arg for url in servers for arg in ("--server", url)],
        "--write",
        str(out),
    )
    conf = (out / "dnsmasq.conf").read_text()
    assert "dhcp-range=10.213.0.0,proxy,255.255.255.0" in conf
    _, log, leases = boot_network.dnsmasq(out / "dnsmasq.conf", tmp_path)

    mac = "52:54:00:fa:12:02"
    with boot_network.start_vm(mac, "pxe-proxy") as machine:
        got = wait_for_requests(requests, 1, machine, REQUEST_TIMEOUT)
        serial = machine.serial_text()
    assert got == ["/boot/ipxe?mac=52%3A54%3A00%3Afa%3A12%3A02"], (got, serial)
    address = lease_of(site_leases, mac)  # the site's server gave the address ...
    assert address is not None and 160 <= int(address.rsplit(".", 1)[1]) <= 199
    assert lease_of(leases, mac) is None  # ... vdfarm's proxy only the boot information
    dhcp_log = log.read_text()
    assert "proxy" in dhcp_log
    assert (f"sent {out}/vdfarm.ipxe to {address}" in dhcp_log) == several
