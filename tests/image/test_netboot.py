"""The network-bootable sample: what it is made of (an ext4 root built
without mounts, busybox and /sbin/init in it; an initramfs with
nbd-client, the network, NBD and ext4 modules and /init), its command
line, and one diskless VM (qemu TCG, -kernel/-initrd/-append) that
downloads its kernel and initramfs from a real `vdfarm server run` by
GET /boot/files, attaches its root over NBD through qemu's user network
(10.0.2.2), switches to it, writes and reads back, and leaves the vDisk
file as it was (standard mode). The sample is built once for the module.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, sha256
from tests.kernel_guest import HOST_FROM_GUEST, markers
from vdfarm.cli.root import cli as vdfarm_cli
from vdfarm.image import cpio, initramfs, kmod, netboot, sample, vm

BOOT_TIMEOUT = 300  # seconds; a TCG boot takes about 10-15

pytestmark = pytest.mark.skipif(
    not (netboot.NBD_CLIENT.is_file() and shutil.which(netboot.MKFS_EXT4)),
    reason="nbd-client or mkfs.ext4 not installed (scripts/install.sh)",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> netboot.NetbootSample:
    return netboot.build(tmp_path_factory.mktemp("netboot"), size_mib=32)


def debugfs(image: Path, request: str) -> str:
    done = subprocess.run(
        ["debugfs", "-R", request, str(image)], capture_output=True, text=True, check=True
    )
    return done.stdout


def test_the_root_is_a_clean_ext4_with_busybox_and_the_init(built, tmp_path):
    assert built.root.stat().st_size == 32 << 20
    subprocess.run(["e2fsck", "-fn", str(built.root)], check=True, capture_output=True)
    assert "vdfarm-root" in debugfs(built.root, "stats")
    debugfs(built.root, f"dump /sbin/init {tmp_path / 'init'}")
    assert (tmp_path / "init").read_bytes() == netboot.ROOT_INIT_SCRIPT.read_bytes()
    debugfs(built.root, f"dump /bin/busybox {tmp_path / 'busybox'}")
    assert (tmp_path / "busybox").read_bytes() == sample.BUSYBOX.read_bytes()
    assert 'Fast link dest: "busybox"' in debugfs(built.root, "stat /bin/sh")
    assert "Mode:  0755" in debugfs(built.root, "stat /sbin/init")


def test_the_initramfs_attaches_with_nbd_client_and_the_modules(built):
    entries = {e.name: e for e in cpio.read_newc(gzip.decompress(built.initrd.read_bytes()))}
    assert entries["init"].data == netboot.INIT_SCRIPT.read_bytes()
    assert entries["usr/sbin/nbd-client"].data == netboot.NBD_CLIENT.read_bytes()
    loaded = [Path(p).name for p in entries["etc/vdfarm-modules"].data.decode().split()]
    for module in ("virtio_net.ko", "nbd.ko", "crc32c_generic.ko", "jbd2.ko", "ext4.ko"):
        assert module in loaded
    assert loaded.index("jbd2.ko") < loaded.index("ext4.ko")
    assert b"DEFAULT_NBD_PORT=10809" in entries[initramfs.CONFIG_PATH].data
    kernel = sample.find_newest_kernel()
    assert built.kernel.read_bytes() == kernel.read_bytes()
    assert (built.kernel.parent / "cmdline").read_text().strip() == built.cmdline
    assert set(netboot.MODULES) >= set(kmod.EXT4_MODULES)


@pytest.mark.parametrize("script", [netboot.INIT_SCRIPT, netboot.ROOT_INIT_SCRIPT])
def test_the_init_scripts_parse_in_busybox_sh(script):
    subprocess.run([str(sample.BUSYBOX), "sh", "-n", str(script)], check=True)


def test_a_device_command_line_names_the_server_and_the_export():
    line = netboot.device_cmdline("console=ttyS0", "10.0.2.2:10809", "pc1", "t1")
    assert line == "console=ttyS0 vdfarm.server=10.0.2.2:10809 vdfarm.export=pc1 vdfarm.id=t1"
    assert netboot.device_cmdline("", "h", "e") == "vdfarm.server=h vdfarm.export=e"


def test_the_command_line_builds_it_or_refuses_in_one_line(tmp_path):
    from click.testing import CliRunner

    runner = CliRunner()
    for argv in (["image", "sample"], ["image", "sample", "x.raw", "--netboot", str(tmp_path)]):
        result = runner.invoke(vdfarm_cli, argv)
        assert result.exit_code == 2 and "give OUT (a disk image) or --netboot DIR" in result.stderr
    result = runner.invoke(
        vdfarm_cli, ["image", "sample", "--netboot", str(tmp_path), "--size-mib", "8"]
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == "vdfarm: error: size_mib must be in [16, 2048], got 8"
    assert list(tmp_path.iterdir()) == []


def import_sample(runner, built: netboot.NetbootSample, name: str = "nb") -> None:
    """Import BUILT's root as vDisk NAME and give its version BUILT's boot
    files and command line, through RUNNER's `cli` (a Farm or a cluster
    server)."""
    runner.cli("vdisk", "import", name, str(built.root))
    runner.cli(
        "vdisk",
        "boot",
        name,
        "--kernel",
        str(built.kernel),
        "--initrd",
        str(built.initrd),
        "--cmdline",
        built.cmdline,
    )


def fetch(url: str, target: Path, halves: bool = False) -> Path:
    """URL's bytes into TARGET (in two ranged requests if HALVES)."""
    if not halves:
        answer = httpx.get(url, timeout=30)
        assert answer.status_code == 200, answer.text
        target.write_bytes(answer.content)
        return target
    size = int(
        httpx.get(url, headers={"Range": "bytes=0-0"}, timeout=30)
        .headers["content-range"]
        .split("/")[1]
    )
    parts = []
    for first, last in ((0, size // 2 - 1), (size // 2, size - 1)):
        answer = httpx.get(url, headers={"Range": f"bytes={first}-{last}"}, timeout=30)
        assert answer.status_code == 206, answer.text
        parts.append(answer.content)
    target.write_bytes(b"".join(parts))
    return target


@pytest.mark.vm
def test_a_diskless_vm_boots_the_sample_from_its_boot_files_and_nbd_root(built, farm, tmp_path):
    import_sample(farm, built)
    farm.cli("device", "add", "pc1", "--vdisk", "nb", "--mac", "52:54:00:12:34:77")
    vdisk_file = farm.data_dir / "store" / "nb" / "base.raw"
    before = sha256(vdisk_file)
    api_port = free_port()
    farm.start(extra_args=("--api-port", str(api_port)))
    files = f"http://127.0.0.1:{api_port}/boot/files/nb/0"
    kernel = fetch(f"{files}/kernel", tmp_path / "vmlinuz")
    initrd = fetch(f"{files}/initrd", tmp_path / "initrd.gz", halves=True)
    assert kernel.read_bytes() == built.kernel.read_bytes()
    assert hashlib.sha256(initrd.read_bytes()).hexdigest() == sha256(built.initrd)

    append = netboot.device_cmdline(built.cmdline, f"{HOST_FROM_GUEST}:{farm.port}", "pc1", "nb1")
    with vm.start_kernel(
        kernel, initrd, append, "nb1", extra_args=tuple(vm.user_nic_args())
    ) as machine:
        result = machine.wait(BOOT_TIMEOUT)
    serial = result.serial_output
    found = markers(serial)
    assert "ERROR" not in found and "ROOT-DONE" in found, serial
    assert not result.timed_out and result.exit_code == 0, result.qemu_stderr
    assert found["NETBOOT-START"] == "nb1"
    assert found["NETBOOT-SERVER"] == f"{HOST_FROM_GUEST}:{farm.port}"
    assert found["NETBOOT-NET"].startswith("10.0.2.15/"), serial  # qemu's DHCP answered
    assert found["NETBOOT-ATTACH"] == f"pc1 {32 << 20}"
    assert found["ROOT-UP"] == "nb1 /dev/nbd0 ext4"
    assert found["ROOT-BEFORE"] == ""  # the probe file is new: nothing wrote it into the vDisk
    assert found["ROOT-READBACK"] == "ok nb1"
    # Standard mode: the guest's writes went to pc1's write cache, not the vDisk.
    farm.stop()
    assert sha256(vdisk_file) == before
    assert "device pc1" in farm.server_log()  # its session, on the stream
