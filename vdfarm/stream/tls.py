"""The NBD listener's TLS: its ssl.SSLContext, and the names a client
certificate carries.

Rules:
- Built once per listener from vdfarm.nbd.tls_config.TLSSettings; every
  file is read here, at build time, so a missing, unreadable or mismatched
  file is one line (TLSFilesError) before the server starts.
- TLS 1.2 or newer. The server shows its certificate and key. With a CA,
  a client certificate is required and verified against it (CERT_REQUIRED):
  the handshake fails without one. Without a CA no client certificate is
  asked for: the connection is private, but says nothing of who is on the
  other side.
- A verified certificate's names are its subject CNs and its DNS
  subjectAltNames; what a name may open is the access rules' business
  (vdfarm.stream.access). An unverified peer has no names (None).
"""

from __future__ import annotations

import ssl
from typing import Any

from vdfarm.nbd.tls_config import TLSFilesError, TLSSettings


def server_context(settings: TLSSettings) -> ssl.SSLContext | None:
    """The server-side SSLContext of SETTINGS, or None when TLS is off.

    Raises TLSFilesError (a file missing, unreadable, not PEM, the key not
    matching the certificate, a CA file holding no certificate).
    """
    if not settings.enabled:
        return None
    assert settings.cert is not None and settings.key is not None  # TLSSettings checks
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(str(settings.cert), str(settings.key))
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise TLSFilesError(
            f"cannot use the NBD TLS certificate {settings.cert} / key {settings.key}: "
            f"{_reason(exc)}"
        ) from exc
    if settings.ca is not None:
        try:
            context.load_verify_locations(cafile=str(settings.ca))
        except OSError as exc:
            raise TLSFilesError(f"cannot use the NBD TLS CA {settings.ca}: {_reason(exc)}") from exc
        if not context.get_ca_certs():
            raise TLSFilesError(f"cannot use the NBD TLS CA {settings.ca}: no CA certificate in it")
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def certificate_names(peercert: Any) -> frozenset[str]:
    """The subject common names and DNS subjectAltNames of a verified peer
    certificate (ssl's `getpeercert()` form); empty if there are none.
    Raises nothing."""
    names: set[str] = set()
    if not isinstance(peercert, dict):
        return frozenset()
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and isinstance(value, str):
                names.add(value)
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS" and isinstance(value, str):
            names.add(value)
    return frozenset(names)


def _reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
