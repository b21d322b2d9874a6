"""How an NBD listener speaks TLS: the `vdfarm server run --tls*` settings.

Rules:
- Plain data, no I/O and no ssl: the CLI checks the combination of flags
  without loading the server; the stream builds the ssl.SSLContext from it
  (vdfarm.stream.tls), which is where the files are read.
- `off` (the default, so existing plaintext clients keep working), `optional`
  or `require` (see vdfarm.nbd.tls for what each does on the wire).
  `optional` and `require` need a certificate and its key; a CA makes every
  TLS client show a certificate it signed, whose names say what it may open.
- Certificate files given with `off` are refused rather than ignored: an
  operator who gave them believes TLS is on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vdfarm.nbd.tls import TLSPolicy

ADMIN_NAME = "admin"  # a client certificate naming this may open every export


class TLSFilesError(ValueError):
    """The TLS certificate, key or CA cannot be used (one line says why)."""


@dataclass(frozen=True)
class TLSSettings:
    """The TLS settings of one NBD listener.

    Raises ValueError (from the constructor) when `policy` is not off and
    the certificate or key is missing, when files are given with `off`, or
    when the policy is not one of off/optional/require.
    """

    policy: TLSPolicy = TLSPolicy.OFF
    cert: Path | None = None  # PEM server certificate (chain)
    key: Path | None = None  # PEM private key of `cert`
    ca: Path | None = None  # PEM CA(s) client certificates must be signed by

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", TLSPolicy(self.policy))
        if self.policy is TLSPolicy.OFF:
            if self.cert is not None or self.key is not None or self.ca is not None:
                raise ValueError(
                    "--tls-cert/--tls-key/--tls-ca given with --tls off: "
                    "give --tls optional or --tls require"
                )
            return
        if self.cert is None or self.key is None:
            raise ValueError(f"--tls {self.policy.value} needs --tls-cert and --tls-key")

    @property
    def enabled(self) -> bool:
        """True when NBD_OPT_STARTTLS is accepted (optional or require)."""
        return self.policy is not TLSPolicy.OFF

    @property
    def verifies_clients(self) -> bool:
        """True when TLS clients must show a certificate signed by `ca`."""
        return self.ca is not None
