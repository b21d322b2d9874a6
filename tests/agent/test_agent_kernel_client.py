"""The Linux kernel's NBD client in front of the agent: a qemu VM (TCG)
boots the host's Debian kernel with an initramfs holding busybox, nbd.ko,
virtio_net and Debian's nbd-client, attaches the device at the agent's
loopback TCP port through qemu's user network (10.0.2.2), and reads the
whole disk with dd; the server the agent streams from is SIGKILLed under
that read. dd completes, with the image's checksum; the agent's status
shows the failover. The guest's script is nbd_client_agent_init.sh.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.kernel_guest import APPEND, NBD_CLIENT, markers, nbd_client_initramfs
from vdfarm.image import sample, vm

INIT_SCRIPT = Path(__file__).with_name("nbd_client_agent_init.sh")
READ_BLOCK = 256 * 1024  # dd's O_DIRECT reads: many requests, so the kill lands among them
BOOT_TIMEOUT = 300  # seconds; a TCG boot takes about 10-20

pytestmark = [
    pytest.mark.vm,
    pytest.mark.skipif(
        not (NBD_CLIENT.is_file() and shutil.which(vm.QEMU)),
        reason="nbd-client or qemu-system-x86_64 not installed",
    ),
]


def guest_initramfs(path: Path, export: str, port: int, version: str) -> Path:
    """An initramfs for kernel VERSION that reads EXPORT at the host's PORT."""
    settings = {"NBD_PORT": port, "EXPORT": export, "READ_BLOCK": READ_BLOCK}
    return nbd_client_initramfs(path, version, INIT_SCRIPT, settings)


def test_dd_through_the_kernel_client_survives_a_killed_server(agent_farm, tmp_path):
    if "sample" not in agent_farm.images:
        pytest.skip("the sample image could not be built here")
    image = agent_farm.images["sample"].read_bytes()
    kernel = sample.find_newest_kernel()
    port = free_port()
    initrd = guest_initramfs(tmp_path / "initrd.gz", "kc1", port, sample.kernel_version(kernel))
    with agent_farm.agent("kc1", tcp_port=port) as agent:
        with vm.start_kernel(
            kernel, initrd, APPEND, "kc1", extra_args=tuple(vm.user_nic_args())
        ) as machine:
            assert machine.wait_for("VDFARM-NBD-READING", BOOT_TIMEOUT), machine.serial_text()
            serving = agent_farm.serving(agent)
            serving.kill()
            under_read = "VDFARM-NBD-READ " not in machine.serial_text()
            t0 = time.monotonic()
            result = machine.wait(BOOT_TIMEOUT)
            print(f"dd went on {time.monotonic() - t0:.1f} s after the kill")
        [record] = agent.settled_failovers(1)
        shown = agent.status()

    serial = result.serial_output
    found = markers(serial)
    assert "ERROR" not in found and "DONE" in found, serial
    assert not result.timed_out and result.exit_code == 0, result.qemu_stderr
    assert found["NBD-ATTACH"] == "kc1 rc=0", serial
    assert int(found["NBD-SIZE"]) == len(image)
    assert found["NBD-READ"] == hashlib.sha256(image).hexdigest(), serial
    assert under_read, "dd had finished before the kill"
    assert record["from_server"] == serving.name and shown["server"] == record["to_server"]
    assert len(shown["failovers"]) == 1, shown
    print(
        f"SIGKILL under dd: {record['from_server']} -> {record['to_server']}, pause "
        f"{record['pause_ms']} ms, {record['retried']} requests sent again"
    )
