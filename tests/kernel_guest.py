"""A Linux guest with the kernel's NBD client, for the tests that put
`nbd-client` in front of a server or the agent: an initramfs for the
host's newest Debian kernel (busybox, virtio_net, nbd.ko, nbd-client and
any FILES), whose /init is the test's own script, reaching the host's
loopback at 10.0.2.2 through qemu's user network; and the VDFARM-NAME
value lines its script prints."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from vdfarm.image import initramfs, kmod, sample

NBD_CLIENT = Path("/usr/sbin/nbd-client")
HOST_FROM_GUEST = "10.0.2.2"  # the host's loopback, through qemu's user network
GUEST_ADDRESS = "10.0.2.15/24"
APPEND = "console=ttyS0,115200 quiet loglevel=3 panic=1"


def nbd_client_initramfs(
    path: Path,
    version: str,
    init_script: Path,
    settings: Mapping[str, object],
    files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write at PATH an initramfs for kernel VERSION running INIT_SCRIPT
    with SETTINGS (plus GUEST_ADDRESS and NBD_HOST) and FILES."""
    data = initramfs.build_initramfs(
        version,
        sample.MODULES_ROOT / version,
        sample.BUSYBOX,
        {"GUEST_ADDRESS": GUEST_ADDRESS, "NBD_HOST": HOST_FROM_GUEST, **settings},
        modules=kmod.VIRTIO_NET_MODULES + kmod.NBD_MODULES,
        programs=[NBD_CLIENT],
        files=dict(files or {}),
        init_script=init_script,
    )
    path.write_bytes(data)
    return path


def markers(serial: str) -> dict[str, str]:
    """VDFARM-NAME value lines of the serial console: the first of each name."""
    found: dict[str, str] = {}
    for line in serial.replace("\r", "").splitlines():
        match = re.match(r"VDFARM-([A-Z-]+)(?: (.*))?$", line.strip())
        if match:
            found.setdefault(match.group(1), (match.group(2) or "").strip())
    return found
