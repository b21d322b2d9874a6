"""The host side of the DHCP/TFTP configuration: an interface's subnet, and
the directory `vdfarm pxe dnsmasq-config --write` fills.

Job: the I/O beside the pure generators (vdfarm.boot.dnsmasq, .chain).
`--write DIR` makes DIR dnsmasq's TFTP root: `dnsmasq.conf`, the chain
script when there are several servers, and symbolic links to the iPXE
loaders of Debian's `ipxe` package (so a package upgrade reaches the
devices; dnsmasq's TFTP follows them).
Rules: a file is written whole or not at all (temporary name, then
rename); only the names below are touched in DIR; errors are OSError with
a one-line reason.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
from pathlib import Path

from vdfarm.boot.chain import CHAIN_SCRIPT
from vdfarm.boot.dnsmasq import BIOS_LOADER, IPXE_DIR, UEFI_LOADER

CONFIG_NAME = "dnsmasq.conf"
SIOCGIFADDR = 0x8915
SIOCGIFNETMASK = 0x891B


def interface_network(name: str) -> ipaddress.IPv4Network:
    """The IPv4 subnet of interface NAME (its first address).

    Raises OSError (no such interface, no IPv4 address).
    """
    request = struct.pack("256s", name.encode()[:15])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        address = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFADDR, request)[20:24])
        netmask = socket.inet_ntoa(fcntl.ioctl(sock.fileno(), SIOCGIFNETMASK, request)[20:24])
    return ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)


def missing_loaders(tftp_root: str) -> list[str]:
    """The iPXE loaders TFTP_ROOT lacks (paths)."""
    return [
        str(Path(tftp_root) / name)
        for name in (BIOS_LOADER, UEFI_LOADER)
        if not (Path(tftp_root) / name).is_file()
    ]


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _link(path: Path, target: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)


def write_boot_dir(
    directory: Path, config: str, script: str | None, ipxe_dir: str = IPXE_DIR
) -> list[Path]:
    """Fill DIRECTORY (made if missing): CONFIG as dnsmasq.conf, SCRIPT (if
    any) as the chain script, links to IPXE_DIR's loaders. The paths written.

    Raises OSError (a loader missing, DIRECTORY not a writable directory).
    """
    for name in (BIOS_LOADER, UEFI_LOADER):
        if not (Path(ipxe_dir) / name).is_file():
            raise FileNotFoundError(
                f"no {Path(ipxe_dir) / name}: install Debian's ipxe package (apt-get install ipxe)"
            )
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    written = [directory / CONFIG_NAME]
    _write_text(directory / CONFIG_NAME, config)
    if script is not None:
        _write_text(directory / CHAIN_SCRIPT, script)
        written.append(directory / CHAIN_SCRIPT)
    else:
        (directory / CHAIN_SCRIPT).unlink(missing_ok=True)
    for name in (BIOS_LOADER, UEFI_LOADER):
        _link(directory / name, Path(ipxe_dir) / name)
        written.append(directory / name)
    return written
