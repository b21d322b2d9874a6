"""The Linux kernel's NBD client over TLS, end to end: a qemu VM (TCG) boots
the host's Debian kernel with an initramfs holding busybox, nbd.ko,
virtio_net and Debian's nbd-client (with its loader and shared libraries),
and pc1's certificate; it reaches a real `vdfarm server run --tls require`
on the host's loopback through qemu's user network (10.0.2.2) and reads,
writes and reads back through /dev/nbd0, then asks for pc2 with pc1's
certificate and is refused. One boot covers both cases (boots are the cost).
The guest's script is nbd_client_tls_init.sh; its markers are checked here
against hashes computed on the host. SQLite only: TLS does not touch the
database.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel_guest import APPEND, NBD_CLIENT, markers, nbd_client_initramfs
from tests.stream.conftest import farm_copy, on_kind, store_file
from tests.stream.pki import Pki, make_pki
from vdfarm.image import sample, vm

INIT_SCRIPT = Path(__file__).with_name("nbd_client_tls_init.sh")
GUEST_TLS_DIR = "/etc/vdfarm/tls"
READ_MIB = 8  # the test image holds data at 0 and 4 MiB, holes between
WRITE_BLOCK = 3 * 1024  # 4 KiB block 3072 = 12 MiB, past the hashed range
WRITE_TEXT = "VDFARM-NBD-TLS-WRITE"
BOOT_TIMEOUT = 300  # seconds; a TCG boot takes about 10-20

pytestmark = [
    pytest.mark.skipif(
        not (NBD_CLIENT.is_file() and shutil.which(vm.QEMU) and shutil.which("openssl")),
        reason="nbd-client, qemu-system-x86_64 or openssl not installed",
    ),
    on_kind("sqlite"),  # one boot is enough
]


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_farm(tmp_path, served_template, pki) -> Iterator:
    """A running server over a copy of the served template, TLS required."""
    with farm_copy(served_template, tmp_path / "data") as farm:
        farm.start(grace=2, extra_args=pki.server_args())
        yield farm


def guest_initramfs(path: Path, pki: Pki, who: str, port: int, version: str) -> Path:
    """An initramfs for kernel VERSION that attaches pc1 over TLS as WHO."""
    certs = pki.client(who)
    files = {
        f"{GUEST_TLS_DIR}/{name}": (certs / name).read_bytes()
        for name in ("client-cert.pem", "client-key.pem", "ca-cert.pem")
    }
    settings = {
        "NBD_PORT": port,
        "TLS_HOSTNAME": "127.0.0.1",  # what the server's certificate names
        "EXPORT": "pc1",
        "OTHER_EXPORT": "pc2",
        "READ_MIB": READ_MIB,
        "WRITE_BLOCK": WRITE_BLOCK,
        "WRITE_TEXT": WRITE_TEXT,
    }
    return nbd_client_initramfs(path, version, INIT_SCRIPT, settings, files)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_kernel_client_reads_and_writes_over_tls_and_cannot_open_another_device(
    tls_farm, pki, tmp_path
):
    golden_file = store_file(tls_farm, "golden")
    golden = golden_file.read_bytes()
    kernel = sample.find_newest_kernel()
    initrd = guest_initramfs(
        tmp_path / "initrd.gz", pki, "pc1", tls_farm.port, sample.kernel_version(kernel)
    )
    with vm.start_kernel(
        kernel, initrd, APPEND, "nbd-tls", extra_args=tuple(vm.user_nic_args())
    ) as machine:
        result = machine.wait(BOOT_TIMEOUT)
    serial = result.serial_output
    found = markers(serial)
    assert "ERROR" not in found and "DONE" in found, serial
    assert not result.timed_out and result.exit_code == 0, result.qemu_stderr

    # pc1 with its own certificate: attached, the right size, the right bytes.
    assert found["NBD-ATTACH"] == "pc1 rc=0", serial
    assert int(found["NBD-SIZE"]) == len(golden)
    assert found["NBD-READ"] == f"{READ_MIB} {sha256(golden[: READ_MIB << 20])}"
    # A written block comes back from the server (the page cache dropped).
    written = WRITE_TEXT.encode().ljust(4096, b"\0")
    assert found["NBD-READBACK"] == sha256(written), serial
    assert found["NBD-WRITE"] in ("direct", "buffered")
    # pc2 with pc1's certificate: refused, nothing attached.
    other = found["NBD-OTHER"]
    assert other.startswith("pc2 rc=") and other != "pc2 rc=0" and other.endswith(" size=0")
    assert "this client certificate does not name device" in serial  # the server's reason

    log = tls_farm.server_log()
    assert "TLS started (pc1)" in log
    assert "certificate (pc1) refused device pc2 (export pc2)" in log
    # Standard mode: pc1's write went to its session, not into the vDisk.
    assert golden_file.read_bytes() == golden
