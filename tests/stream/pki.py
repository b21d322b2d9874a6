"""Throw-away x509 files for the NBD TLS tests, made by `openssl` (no
network): a farm CA, a server certificate for 127.0.0.1, and client
certificates laid out as libnbd's `tls-certificates=DIR` and qemu's
`tls-creds-x509,dir=DIR` expect them (ca-cert.pem, client-cert.pem,
client-key.pem), one directory per client name. A second, unrelated CA
signs the `rogue` client ("pc1" by its name, but not ours)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.api.tls import make_ca

DAYS = "2"
EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=60)


def _sign(
    directory: Path, stem: str, subject: str, extensions: str, ca: Path, ca_key: Path
) -> tuple[Path, Path]:
    key, csr, cert = directory / f"{stem}.key", directory / f"{stem}.csr", directory / f"{stem}.pem"
    ext = directory / f"{stem}.ext"
    ext.write_text(extensions)
    _openssl("req", *EC, "-keyout", key, "-out", csr, "-subj", subject)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", DAYS, "-extfile", ext,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Pki:
    ca: Path  # the farm CA (--tls-ca)
    cert: Path  # the server's certificate (--tls-cert) ...
    key: Path  # ... and key (--tls-key)
    root: Path

    def client(self, name: str) -> Path:
        """The tls-certificates directory of client NAME."""
        return self.root / "clients" / name

    def server_args(self) -> tuple[str, ...]:
        """`server run` options: TLS required, client certificates verified by the farm CA."""
        return (
            "--tls", "require", "--tls-cert", str(self.cert), "--tls-key", str(self.key),
            "--tls-ca", str(self.ca),
        )  # fmt: skip


# Client name -> (subject, subjectAltName or ""): pc1 names itself by CN only,
# pc2 by a DNS subjectAltName only (its CN is something else).
CLIENTS = {
    "pc1": ("/CN=pc1", ""),
    "pc2": ("/CN=second desk", "subjectAltName = DNS:pc2\n"),
    "admin": ("/CN=admin", ""),
}


def make_pki(root: Path) -> Pki:
    """The farm CA, a server certificate, clients pc1, pc2, admin (signed
    by the farm CA) and rogue (CN=pc1, signed by another CA)."""
    root.mkdir(parents=True, exist_ok=True)
    ca, ca_key = make_ca(root, "farm-ca")
    other_ca, other_key = make_ca(root, "other-ca")
    cert, key = _sign(
        root,
        "server",
        "/CN=127.0.0.1",
        "extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1, DNS:localhost\n",
        ca,
        ca_key,
    )
    clients = {**CLIENTS, "rogue": ("/CN=pc1", "")}
    for name, (subject, san) in clients.items():
        d = root / "clients" / name
        d.mkdir(parents=True)
        signer = (other_ca, other_key) if name == "rogue" else (ca, ca_key)
        c, k = _sign(d, "client", subject, "extendedKeyUsage = clientAuth\n" + san, *signer)
        c.rename(d / "client-cert.pem")
        k.rename(d / "client-key.pem")
        (d / "ca-cert.pem").write_bytes(ca.read_bytes())  # the server is always ours
    return Pki(ca=ca, cert=cert, key=key, root=root)
