"""dnsmasq's configuration for network-booting a farm's devices.

Job: checked inputs -> the text of a dnsmasq configuration file. dnsmasq
answers DHCP on one interface, either as a proxy beside the site's own DHCP
server (boot information only, no addresses) or as the DHCP server of a
range, and serves iPXE by TFTP:
- a firmware PXE client (not iPXE yet) gets iPXE: `undionly.kpxe` on BIOS
  (client-arch 0), `ipxe.efi` on x86-64 UEFI (client-arch 7 and 9);
- an iPXE client (user class `iPXE`, or DHCP option 175) gets the farm's
  boot URL, `http://SERVER:PORT/boot/ipxe?mac=…`, or with several servers
  the name of the TFTP script that tries them in turn (vdfarm.boot.chain).
In proxy mode every client is answered by `pxe-service` (a one-item PXE
menu: dnsmasq ignores `dhcp-boot` for firmware there, and qemu's iPXE
1.0.0+git-20190125 ignores a proxy offer's boot file but follows its menu,
tried in tests/boot/test_dnsmasq_netns.py); the `dhcp-boot` line stays for
iPXE builds that read the proxy offer's boot file. dnsmasq adds PXE's
`.0` layer suffix to a menu item's file name without a dot, so in proxy
mode a boot URL without one (a server named `farm1` or `[fd00::1]`) goes
through the chain script too.
Rules: pure; inputs come checked (vdfarm.boot.inputs), so every line is
plain ASCII of known shape; DNS stays off (`port=0`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vdfarm.boot.chain import CHAIN_SCRIPT, MAX_BOOT_FILE, boot_url
from vdfarm.boot.inputs import FullDhcp, ProxyDhcp, ServerUrl

BIOS_LOADER = "undionly.kpxe"
UEFI_LOADER = "ipxe.efi"
# Where Debian's `ipxe` package installs both.
IPXE_DIR = "/usr/lib/ipxe"
MENU_TEXT = '"Network boot (vdfarm)"'


@dataclass(frozen=True)
class DnsmasqSettings:
    """What the configuration is made of (each part checked)."""

    interface: str
    dhcp: ProxyDhcp | FullDhcp
    servers: tuple[ServerUrl, ...]
    tftp_root: str = IPXE_DIR


def uses_chain_script(servers: Sequence[ServerUrl], dhcp: ProxyDhcp | FullDhcp) -> bool:
    """Whether iPXE is sent to the TFTP script (several servers; in proxy
    mode, a boot URL without a dot) rather than straight to one server's
    boot URL."""
    if len(servers) > 1:
        return True
    return isinstance(dhcp, ProxyDhcp) and bool(servers) and "." not in boot_url(servers[0])


def ipxe_boot_file(servers: Sequence[ServerUrl], dhcp: ProxyDhcp | FullDhcp) -> str:
    """What DHCP tells an iPXE client to load: the one server's boot URL, or
    the chain script's name (fetched from dnsmasq by TFTP).

    Raises ValueError (no servers; a URL too long for DHCP's boot file field).
    """
    if not servers:
        raise ValueError("no farm server to boot from")
    if uses_chain_script(servers, dhcp):
        return CHAIN_SCRIPT
    url = boot_url(servers[0])
    if len(url) > MAX_BOOT_FILE:
        raise ValueError(
            f"the boot URL {url} is longer than the {MAX_BOOT_FILE} characters of a "
            "DHCP boot file name: give the server a shorter name or address"
        )
    return url


def _dhcp_lines(dhcp: ProxyDhcp | FullDhcp) -> list[str]:
    if isinstance(dhcp, ProxyDhcp):
        net = dhcp.network
        return [
            f"# Proxy-DHCP for {net}: the site's DHCP server hands out the addresses,",
            "# dnsmasq only adds the boot information.",
            f"dhcp-range={net.network_address},proxy,{net.netmask}",
        ]
    mask = f",{dhcp.netmask}" if dhcp.netmask is not None else ""
    return [
        "# Full DHCP: dnsmasq hands out these addresses itself.",
        f"dhcp-range={dhcp.start},{dhcp.end}{mask},1h",
    ]


def _firmware_lines(dhcp: ProxyDhcp | FullDhcp, target: str) -> list[str]:
    if isinstance(dhcp, ProxyDhcp):
        return [
            "# Firmware PXE clients (not iPXE yet) load iPXE by TFTP.",
            f"pxe-service=tag:!ipxe,x86PC,{MENU_TEXT},{BIOS_LOADER}",
            f"pxe-service=tag:!ipxe,BC_EFI,{MENU_TEXT},{UEFI_LOADER}",
            f"pxe-service=tag:!ipxe,x86-64_EFI,{MENU_TEXT},{UEFI_LOADER}",
            "# iPXE clients get the farm's boot script as their one menu item.",
            f"pxe-service=tag:ipxe,x86PC,{MENU_TEXT},{target}",
            f"pxe-service=tag:ipxe,BC_EFI,{MENU_TEXT},{target}",
            f"pxe-service=tag:ipxe,x86-64_EFI,{MENU_TEXT},{target}",
        ]
    return [
        "# Firmware PXE clients (not iPXE yet) load iPXE by TFTP:",
        "# BIOS (client-arch 0), x86-64 UEFI (client-arch 7 and 9).",
        "dhcp-match=set:bios,option:client-arch,0",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        f"dhcp-boot=tag:bios,tag:!ipxe,{BIOS_LOADER}",
        f"dhcp-boot=tag:efi64,tag:!ipxe,{UEFI_LOADER}",
    ]


def dnsmasq_config(settings: DnsmasqSettings) -> str:
    """The configuration file's text.

    Raises ValueError (no servers; a boot URL too long for DHCP).
    """
    target = ipxe_boot_file(settings.servers, settings.dhcp)
    servers = " ".join(str(s) for s in settings.servers)
    if uses_chain_script(settings.servers, settings.dhcp):
        ipxe_comment = f"# iPXE clients run {CHAIN_SCRIPT} (TFTP), which tries each farm server."
    else:
        ipxe_comment = "# iPXE clients fetch their boot script from the farm server."
    lines = [
        "# dnsmasq configuration for vdfarm network boot",
        "# (generated by `vdfarm pxe dnsmasq-config`; edits are lost when it is made again)",
        f"# farm servers: {servers}",
        "",
        "# DHCP and TFTP only, on one interface; no DNS.",
        "port=0",
        f"interface={settings.interface}",
        "bind-interfaces",
        "",
        *_dhcp_lines(settings.dhcp),
        "",
        "# Tell iPXE clients apart: user class iPXE, or option 175.",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:ipxe,175",
        "",
        "enable-tftp",
        f"tftp-root={settings.tftp_root}",
        "",
        *_firmware_lines(settings.dhcp, target),
        "",
        ipxe_comment,
        f"dhcp-boot=tag:ipxe,{target}",
        "",
        "# Keep the boot file name in its own field (old PXE ROMs read only that).",
        "dhcp-no-override",
    ]
    return "\n".join(lines) + "\n"
