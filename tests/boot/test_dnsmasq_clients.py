"""What real dnsmasq, running the generated full-DHCP configuration in a
network namespace of the test's own, answers each kind of PXE client: a
DHCP client (busybox udhcpc on a veth of the bridge) says what a firmware
PXE ROM or iPXE says (vendor class PXEClient, client-arch in option 93,
user class iPXE in option 77) and reads the boot file and next server of
the answer. No VM: qemu's NIC ROM is iPXE, so only this shows what a BIOS
or UEFI firmware ROM is told."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.boot.netns import BRIDGE, BRIDGE_ADDRESS, DHCP_RANGE, DNSMASQ
from tests.boot.test_dnsmasq_netns import dnsmasq_config
from vdfarm.boot.dnsmasq import IPXE_DIR

BUSYBOX = shutil.which("busybox") or "/bin/busybox"

pytestmark = pytest.mark.skipif(
    not (
        os.path.exists(DNSMASQ)
        and os.path.isfile(f"{IPXE_DIR}/undionly.kpxe")
        and os.path.exists(BUSYBOX)
    ),
    reason="dnsmasq, Debian's ipxe or busybox not installed (scripts/install.sh --test)",
)

# udhcpc runs it at each event: the answer's fields, one per line.
SCRIPT = """#!/bin/sh
[ "$1" = bound ] && printf 'ip=%s\\nboot_file=%s\\nsiaddr=%s\\n' "$ip" "$boot_file" "$siaddr" > "$ANSWER"
exit 0
"""
PXE_VENDOR = "PXEClient:Arch:{arch:05d}:UNDI:003016"
IPXE_USER_CLASS = "69505845"  # "iPXE"


def ask(network, tmp_path, n: int, arch: int, ipxe: bool) -> dict[str, str]:
    """One DHCP exchange as a PXE client of ARCH (as iPXE if IPXE), from a
    new veth on the bridge; the answer's ip, boot_file and siaddr."""
    client, peer = f"vdcl{n}", f"vdcp{n}"
    network.run(["ip", "link", "add", client, "type", "veth", "peer", "name", peer])
    network.run(["ip", "link", "set", client, "address", f"52:54:00:fb:00:{n:02x}"])
    network.run(["ip", "link", "set", peer, "master", BRIDGE])
    network.run(["ip", "link", "set", peer, "up"])
    network.run(["ip", "link", "set", client, "up"])
    script, answer = tmp_path / "udhcpc.sh", tmp_path / f"answer{n}"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    argv = [BUSYBOX, "udhcpc", "-i", client, "-f", "-q", "-n", "-t", "5", "-T", "2"]
    argv += ["-s", str(script), "-V", PXE_VENDOR.format(arch=arch), "-x", f"0x5d:{arch:04x}"]
    if ipxe:
        argv += ["-x", f"0x4d:{IPXE_USER_CLASS}"]
    done = subprocess.run(
        ["env", f"ANSWER={answer}", *network.argv(argv)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and answer.exists(), done.stderr
    return dict(line.split("=", 1) for line in answer.read_text().splitlines())


def test_each_client_kind_gets_its_file(boot_network, tmp_path):
    out = tmp_path / "pxe"
    dnsmasq_config(
        None,
        "--interface",
        BRIDGE,
        "--range",
        DHCP_RANGE,
        "--server",
        f"http://{BRIDGE_ADDRESS}:8080",
        "--write",
        str(out),
    )
    boot_network.dnsmasq(out / "dnsmasq.conf", tmp_path)
    url = f"http://{BRIDGE_ADDRESS}:8080/boot/ipxe?mac=${{netX/mac}}"
    cases = [
        (0, False, "undionly.kpxe"),  # BIOS firmware
        (7, False, "ipxe.efi"),  # UEFI firmware (EFI BC)
        (9, False, "ipxe.efi"),  # UEFI firmware (x86-64)
        (0, True, url),  # iPXE on BIOS
        (7, True, url),  # iPXE on UEFI
    ]
    for n, (arch, ipxe, expected) in enumerate(cases, 1):
        answer = ask(boot_network, tmp_path, n, arch, ipxe)
        assert answer["boot_file"] == expected, (arch, ipxe, answer)
        assert answer["siaddr"] == BRIDGE_ADDRESS  # the TFTP server: dnsmasq itself
        assert answer["ip"].startswith("10.213.0.1")
