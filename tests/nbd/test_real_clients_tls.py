"""The machine's STARTTLS against real TLS clients (libnbd's nbdinfo and
nbdcopy with nbds://, qemu-img with tls-creds-x509), through the blocking
test server of test_real_clients, here with x509 certificates made by
openssl and Python's ssl on the server side (TLS 1.2+, client certificates
required)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess

import pytest

from tests.nbd.test_real_clients import SIZE, MemoryServer, run
from vdfarm.nbd.events import Disconnect, StartTLS
from vdfarm.nbd.server import NEED_DATA, ServerConnection

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nbdinfo", "nbdcopy", "qemu-img", "openssl")),
    reason="real NBD clients or openssl not installed",
)


def openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> str:
    """ca-cert.pem, server-cert/key.pem and client-cert/key.pem (the names
    libnbd and qemu look for in a tls-certificates / tls-creds dir)."""
    d = str(tmp_path_factory.mktemp("pki"))
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test ca",
            "-keyout", "ca-key.pem", "-out", "ca-cert.pem", cwd=d)  # fmt: skip
    for role, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        with open(os.path.join(d, f"{role}.ext"), "w") as f:
            f.write(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={role}",
                "-keyout", f"{role}-key.pem", "-out", f"{role}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{role}.csr", "-CA", "ca-cert.pem", "-CAkey", "ca-key.pem",
                "-CAcreateserial", "-days", "2", "-extfile", f"{role}.ext",
                "-out", f"{role}-cert.pem", cwd=d)  # fmt: skip
    return d


class TLSServer(MemoryServer):
    """MemoryServer with a TLS policy: on StartTLS it sends the ACK, runs
    the handshake on the same socket and calls tls_started()."""

    def __init__(self, policy: str, pki: str) -> None:
        self.policy = policy
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(f"{pki}/server-cert.pem", f"{pki}/server-key.pem")
        ctx.load_verify_locations(f"{pki}/ca-cert.pem")
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx = ctx
        self.peers: list[str] = []  # CN of each client certificate seen
        super().__init__()

    def _serve(self, sock: socket.socket) -> None:
        conn = ServerConnection(tls=self.policy)
        try:
            sock.sendall(conn.start())
            while True:
                data = sock.recv(1 << 20)
                conn.receive_data(data)
                while (ev := conn.next_event()) is not NEED_DATA:
                    if isinstance(ev, StartTLS):
                        sock.sendall(conn.data_to_send())
                        sock = self.ctx.wrap_socket(sock, server_side=True)
                        cert = sock.getpeercert() or {}
                        subject = dict(x[0] for x in cert.get("subject", ()))
                        self.peers.append(subject.get("commonName", ""))
                        conn.tls_started()
                        continue
                    sock.sendall(conn.data_to_send() + self._answer(conn, ev))
                    if isinstance(ev, Disconnect) or conn.state.name == "CLOSED":
                        return
                sock.sendall(conn.data_to_send())
        except (OSError, ssl.SSLError):
            return
        finally:
            sock.close()


@pytest.fixture(params=["optional", "require"])
def tls_server(request, pki):
    srv = TLSServer(request.param, pki)
    yield srv
    srv.close()


def nbds(server: MemoryServer, pki: str, name: str = "disk") -> str:
    return f"nbds://127.0.0.1:{server.port}/{name}?tls-certificates={pki}"


def test_nbdinfo_over_tls(tls_server, pki):
    info = json.loads(run("nbdinfo", "--json", nbds(tls_server, pki)).stdout)
    assert info["TLS"] is True
    assert info["exports"][0]["export-size"] == SIZE
    assert "base:allocation" in info["exports"][0]["contexts"]
    assert tls_server.peers == ["client"]


def test_plain_client_is_refused_only_under_require(tls_server):
    proc = run("nbdinfo", "--json", tls_server.uri(), check=False)
    if tls_server.policy == "require":
        assert proc.returncode != 0  # libnbd reports NBD_REP_ERR_TLS_REQD as ENOTSUP
        assert "nbd_opt_go" in proc.stderr
    else:
        assert json.loads(proc.stdout)["TLS"] is False


def test_nbdcopy_round_trip_over_tls(tls_server, pki, tmp_path):
    src = tmp_path / "src"
    src.write_bytes(os.urandom(SIZE))
    run("nbdcopy", str(src), nbds(tls_server, pki))
    assert bytes(tls_server.disk) == src.read_bytes()
    dst = tmp_path / "dst"
    run("nbdcopy", nbds(tls_server, pki), str(dst))
    assert dst.read_bytes() == src.read_bytes()


def test_qemu_img_over_tls(tls_server, pki):
    proc = run(
        "qemu-img", "info", "--output=json",
        "--object", f"tls-creds-x509,id=tls0,dir={pki},endpoint=client",
        "--image-opts",
        f"driver=nbd,host=127.0.0.1,port={tls_server.port},export=disk,tls-creds=tls0",
    )  # fmt: skip
    assert json.loads(proc.stdout)["virtual-size"] == SIZE
    assert tls_server.peers == ["client"]


def test_client_without_a_certificate_fails_the_handshake(tls_server, pki, tmp_path):
    cadir = tmp_path / "ca-only"
    cadir.mkdir()
    shutil.copy(f"{pki}/ca-cert.pem", cadir)
    proc = run("nbdinfo", "--json", nbds(tls_server, str(cadir)), check=False)
    assert proc.returncode != 0
    assert tls_server.peers == []
