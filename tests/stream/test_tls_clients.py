"""NBD over TLS against a real `vdfarm server run --tls require --tls-cert
--tls-key --tls-ca` process, with the real clients devices and operators
use: qemu-img / qemu-io (`tls-creds-x509`), nbdinfo / nbdcopy (`nbds://`
with `tls-certificates=DIR`) and nbd-client (`-certfile -keyfile
-cacertfile`; its kernel side, /dev/nbdN, in a VM: test_nbd_client_tls_vm.py). Certificates come from pki.py: pc1 (CN), pc2 (DNS alt
name), admin, and rogue (CN=pc1 from another CA). SQLite only: TLS does
not touch the database.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator

import pytest

from tests.stream.conftest import farm_copy, run, store_file
from tests.stream.pki import Pki, make_pki

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nbdinfo", "nbdcopy", "qemu-img", "qemu-io", "openssl")),
    reason="real NBD clients or openssl not installed",
)

MAC = "52:54:00:12:34:01"  # pc1's MAC in the served template


@pytest.fixture(scope="session")
def db_kind() -> str:
    return "sqlite"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_farm(tmp_path, served_template, pki) -> Iterator:
    """A running server over a copy of the served template, TLS required,
    client certificates verified against the farm CA."""
    with farm_copy(served_template, tmp_path / "data") as farm:
        farm.start(grace=2, extra_args=(*pki.server_args(), "--list-exports"))
        yield farm


def nbds(farm, pki: Pki, who: str, export: str) -> str:
    return f"nbds://127.0.0.1:{farm.port}/{export}?tls-certificates={pki.client(who)}"


def qemu_creds(pki: Pki, who: str) -> list[str]:
    return ["--object", f"tls-creds-x509,id=tls0,dir={pki.client(who)},endpoint=client"]


def qemu_opts(farm, export: str) -> str:
    return f"driver=nbd,host=127.0.0.1,port={farm.port},export={export},tls-creds=tls0"


def test_qemu_reads_and_writes_with_the_device_certificate(tls_farm, pki, tmp_path):
    golden = store_file(tls_farm, "golden").read_bytes()
    copy = tmp_path / "copy.raw"
    # The whole disk through TLS, read in big requests: sendfile stays off.
    run("qemu-img", "convert", *qemu_creds(pki, "pc1"), "--image-opts", qemu_opts(tls_farm, MAC),
        "-O", "raw", str(copy))  # fmt: skip
    assert copy.read_bytes() == golden
    out = run(
        "qemu-io", *qemu_creds(pki, "pc1"), "--image-opts", qemu_opts(tls_farm, "pc1"),
        "-c", "write -P 0xab 1M 1M", "-c", "read -P 0xab 1M 1M", "-c", "read -P 0 3M 4k",
    ).stdout  # fmt: skip
    assert "Pattern verification failed" not in out and out.count("read 1048576/1048576") == 1
    info = json.loads(
        run(
            "qemu-img",
            "info",
            "--output=json",
            *qemu_creds(pki, "pc1"),
            "--image-opts",
            qemu_opts(tls_farm, "pc1"),
        ).stdout  # fmt: skip
    )
    assert info["virtual-size"] == len(golden)
    assert "TLS started (pc1)" in tls_farm.server_log()


def test_nbdinfo_and_nbdcopy_with_the_device_certificate(tls_farm, pki, tmp_path):
    info = json.loads(run("nbdinfo", "--json", nbds(tls_farm, pki, "pc2", "pc2")).stdout)
    assert info["TLS"] is True
    golden = store_file(tls_farm, "golden").read_bytes()
    assert info["exports"][0]["export-size"] == len(golden)
    out = tmp_path / "out.raw"
    run("nbdcopy", nbds(tls_farm, pki, "pc1", "pc1"), str(out))
    assert out.read_bytes() == golden
    # Writes through TLS: 4 MiB into solo's private vDisk (admin may), read back.
    written = tmp_path / "written.raw"
    written.write_bytes(os.urandom(4 << 20))
    run("nbdcopy", str(written), nbds(tls_farm, pki, "admin", "solo"))
    back = tmp_path / "back.raw"
    run("nbdcopy", nbds(tls_farm, pki, "admin", "solo"), str(back))
    assert back.read_bytes()[: 4 << 20] == written.read_bytes()


def test_require_refuses_a_plain_client(tls_farm):
    proc = run("nbdinfo", "--json", tls_farm.uri("pc1"), check=False)
    assert proc.returncode != 0 and "nbd_opt_go" in proc.stderr


def test_a_certificate_for_pc2_cannot_open_pc1(tls_farm, pki):
    for export in ("pc1", MAC):
        proc = run("nbdinfo", "--json", nbds(tls_farm, pki, "pc2", export), check=False)
        assert proc.returncode != 0 and "nbd_opt_go" in proc.stderr
    log = tls_farm.server_log()
    assert "certificate (pc2, second desk) refused device pc1 (export pc1)" in log
    assert f"refused device pc1 (export {MAC})" in log
    assert "streaming" not in log


def test_an_admin_certificate_opens_any_device_and_a_vdisk_view(tls_farm, pki):
    for export in ("pc1", "solo", "vdisk/golden"):
        info = json.loads(run("nbdinfo", "--json", nbds(tls_farm, pki, "admin", export)).stdout)
        assert info["TLS"] is True
    proc = run(
        "qemu-io", "-r", *qemu_creds(pki, "admin"),
        "--image-opts", qemu_opts(tls_farm, "vdisk/golden"), "-c", "read 0 1M",
    )  # fmt: skip
    assert "read 1048576/1048576" in proc.stdout


def test_a_certificate_of_another_ca_is_refused_at_the_handshake(tls_farm, pki):
    proc = run("nbdinfo", "--json", nbds(tls_farm, pki, "rogue", "pc1"), check=False)
    assert proc.returncode != 0
    assert "TLS handshake failed" in tls_farm.server_log()
    assert "streaming" not in tls_farm.server_log()


# -- nbd-client (the kernel's client) -------------------------------------------------


def nbd_client_tls(pki: Pki, who: str) -> list[str]:
    d = pki.client(who)
    return [
        "-certfile", str(d / "client-cert.pem"), "-keyfile", str(d / "client-key.pem"),
        "-cacertfile", str(d / "ca-cert.pem"), "-tlshostname", "127.0.0.1",
    ]  # fmt: skip


needs_nbd_client = pytest.mark.skipif(
    shutil.which("nbd-client") is None, reason="nbd-client not installed"
)


@needs_nbd_client
def test_nbd_client_negotiates_tls_with_its_certificate(tls_farm, pki):
    """The handshake and the identity rules, in nbd-client's own TLS code on
    the host (no kernel module needed: the list, and a GO refused before the
    kernel step). Reading through /dev/nbdN: test_nbd_client_tls_vm.py."""
    listed = run("nbd-client", "-l", "127.0.0.1", str(tls_farm.port), *nbd_client_tls(pki, "pc1"))
    assert "pc1" in listed.stdout and "pc2" in listed.stdout
    refused = run(
        "nbd-client", "-N", "pc1", "127.0.0.1", str(tls_farm.port), "/dev/nbd15",
        *nbd_client_tls(pki, "pc2"), check=False, timeout=30,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "does not name device pc1" in refused.stdout + refused.stderr
