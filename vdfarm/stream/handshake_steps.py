"""The handshake steps of one NBD connection: which export or vDisk view it
may open, STARTTLS, and the replies that accept, refuse or list exports.
`HandshakeSteps` is the lowest base of NBDConnection (vdfarm.stream.connection).

Rules:
- Handshake steps that need the database (export lookup, lock) run as a task
  (started by the event loop, vdfarm.stream.requests); while one runs,
  parsing stops and bytes just accumulate.
- A refused export answers with the NBD error the farm's error type maps to
  (`_FARM_ERRORS_TO_REP`: the port's types, one table) and its one line.
- STARTTLS (the listener's TLS policy, vdfarm.nbd.tls): reading stops at
  once, the ACK is written, the TLS handshake runs as a handshake step on
  the same socket (`loop.start_tls`, a new transport), then the machine is
  told (`tls_started`). A failed handshake closes the connection. Under TLS
  sendfile(2) is off for good (`_sock_fd = -1`): it would write plaintext
  past the TLS layer. With a client CA the verified certificate's names
  decide what may be opened (vdfarm.stream.access). A vDisk that requires
  TLS is refused to a plaintext client once its export resolves:
  NBD_REP_ERR_TLS_REQD under `--tls optional`, NBD_REP_ERR_POLICY (and an
  error line for the operator) under `--tls off`.
- An opened export's NBD description (NBD_INFO_DESCRIPTION, when the client
  asks) is `port.export_description`: vDisk, version, sha256 and size, so a
  device's agent can check a server it fails over to serves the same copy.
- The attributes are declared here, set by NBDConnection.__init__ and
  connection_made; these methods are inherited, never delegated to.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from concurrent.futures import Executor
from typing import Protocol

from vdfarm.block.layer import Capabilities
from vdfarm.block.stack import CheckedStack
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import RemoteProtocolError
from vdfarm.nbd.events import ExportRequest
from vdfarm.nbd.limits import ConnectionLimits
from vdfarm.nbd.server import ExportInfo, ServerConnection
from vdfarm.nbd.text import printable
from vdfarm.nbd.tls_config import TLSSettings
from vdfarm.stream.access import (
    CertificateRefused,
    PeerMismatch,
    TLSRequired,
    TLSUnavailable,
    ViewRefused,
    certificate_binding,
    certificate_grant,
    may_open_views,
    tls_refusal,
)
from vdfarm.stream.device_session import DeviceSession
from vdfarm.stream.flags import transmission_flags
from vdfarm.stream.limits import Admission, RefusalLog
from vdfarm.stream.port import (
    ExportRefused,
    ExportTarget,
    FarmError,
    FarmUnavailable,
    LockConflict,
    NotInStore,
    UnknownExport,
    VdiskView,
    export_description,
)
from vdfarm.stream.sessions import SessionRegistry
from vdfarm.stream.tls import certificate_names

log = logging.getLogger("vdfarm.stream")

VIEW_PREFIX = "vdisk/"  # export "vdisk/NAME": read-only view of a vDisk
_FARM_ERRORS_TO_REP: dict[type[Exception], int] = {
    UnknownExport: c.REP_ERR_UNKNOWN,
    ExportRefused: c.REP_ERR_UNKNOWN,
    FarmUnavailable: c.REP_ERR_UNKNOWN,
    NotInStore: c.REP_ERR_UNKNOWN,
    LockConflict: c.REP_ERR_POLICY,
    ViewRefused: c.REP_ERR_POLICY,
    PeerMismatch: c.REP_ERR_POLICY,
    CertificateRefused: c.REP_ERR_POLICY,
    TLSRequired: c.REP_ERR_TLS_REQD,
    TLSUnavailable: c.REP_ERR_POLICY,
    FarmError: c.REP_ERR_UNKNOWN,
}


class Listener(Protocol):
    """What the handshake steps and the request path need of the listener
    that made the connection (the StreamServer). ConnectionOwner
    (vdfarm.stream.connection) adds the listener's set of connections."""

    @property
    def registry(self) -> SessionRegistry: ...

    @property
    def io_executor(self) -> Executor: ...

    @property
    def limits(self) -> ConnectionLimits: ...

    @property
    def admission(self) -> Admission: ...

    @property
    def refusals(self) -> RefusalLog: ...

    @property
    def tls(self) -> TLSSettings: ...

    @property
    def ssl_context(self) -> ssl.SSLContext | None: ...

    def capabilities_for_mode(self, mode: str) -> Capabilities: ...

    def list_exports(self) -> list[tuple[str, str]]: ...


class HandshakeSteps(asyncio.Protocol):
    """The handshake half of NBDConnection: export and view requests, the
    TLS and certificate checks, STARTTLS, accept, reject and list."""

    # Set by NBDConnection.__init__; `transport` by connection_made (and a
    # new one by STARTTLS), `stack` by the export's acceptance, before
    # anything reads them.
    server: Listener
    registry: SessionRegistry
    nbd: ServerConnection
    transport: asyncio.Transport
    stack: CheckedStack
    session: DeviceSession | None
    view: VdiskView | None
    peer: str
    client_ip: str | None
    cert_names: frozenset[str] | None
    peer_binding: str | None
    _tls_early: list[bytes] | None
    _sock_fd: int
    _closed: bool
    _handshaking: bool
    _handshake_timer: asyncio.TimerHandle | None

    def _entered_transmission(self) -> None:
        self._handshaking = False
        self.server.admission.handshake_done()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _close(self) -> None:
        if not self._closed:
            self.transport.close()

    # -- handshake ---------------------------------------------------------
    async def _export_request(self, ev: ExportRequest) -> None:
        if ev.name.startswith(VIEW_PREFIX):
            await self._view_request(ev)
            return
        try:
            target = await self.registry.resolve(ev.name)
            self._check_tls(target)
            self._check_certificate(ev, target)
        except Exception as exc:
            self._reject(ev, exc)
            return
        if not ev.go:
            info = self._export_info(target, self._capabilities_for(target))
            self.transport.write(self.nbd.accept_export(info))
            return
        try:
            session = await self.registry.attach(target, self)
        except Exception as exc:
            self._reject(ev, exc)
            return
        if self._closed:  # client went away while we were opening
            self.registry.detach(session, self, clean=False)
            return
        self.session = session
        self.stack = session.stack
        info = self._export_info(target, session.stack.capabilities())
        self.transport.write(self.nbd.accept_export(info))
        self._entered_transmission()
        log.info(
            "%s: device %s streaming vDisk %s (%s)",
            self.peer,
            target.device_name,
            target.vdisk_name,
            target.access_mode,
        )

    async def _view_request(self, ev: ExportRequest) -> None:
        if not may_open_views(self.client_ip, self.cert_names):
            self._reject(
                ev,
                ViewRefused(
                    "vDisk views are served to this server's own host or an admin certificate only"
                ),
            )
            return
        try:
            target = await self.registry.resolve_view(ev.name[len(VIEW_PREFIX) :])
            self._check_tls(target)
        except Exception as exc:
            self._reject(ev, exc)
            return
        if self._closed:
            return
        stack = self.registry.open_view(target)
        info = self._export_info(target, stack.capabilities())
        if not ev.go:
            self.registry.close_view(target)
        else:
            self.view, self.stack = target, stack
        self.transport.write(self.nbd.accept_export(info))
        if ev.go:
            self._entered_transmission()

    def _check_tls(self, target: ExportTarget | VdiskView) -> None:
        """Refuse a vDisk that requires TLS to a connection without it.
        Raises TLSRequired (STARTTLS possible), TLSUnavailable (TLS off)."""
        refusal = tls_refusal(
            target.vdisk_name, target.require_tls, self.nbd.tls_active, self.server.tls.enabled
        )
        if refusal is None:
            return
        if isinstance(refusal, TLSUnavailable):  # no client can open it here: the operator's
            log.error(
                "%s: %s: start the servers with --tls optional or require, "
                "or run 'vdfarm vdisk set %s --no-require-tls'",
                self.peer,
                refusal,
                target.vdisk_name,
            )
        raise refusal

    def _check_certificate(self, ev: ExportRequest, target: ExportTarget) -> None:
        """With a verified client certificate: refuse a device it does not
        name, else bind the session to it. Raises CertificateRefused."""
        names = self.cert_names
        if names is None:  # no certificate identity: the address rules
            return
        granted = certificate_grant(names, target.device_name)
        if granted is None:
            shown = ", ".join(sorted(printable(n) for n in names)) or "no name"
            log.warning(
                "%s: certificate (%s) refused device %s (export %s)",
                self.peer,
                shown,
                target.device_name,
                printable(ev.name),
            )
            raise CertificateRefused(
                f"this client certificate does not name device {target.device_name}"
            )
        self.peer_binding = certificate_binding(granted)

    async def _start_tls(self) -> None:
        """The TLS handshake after STARTTLS's ACK; then the machine goes on
        over TLS. A failed handshake closes the connection. Raises nothing."""
        old = self.transport
        context = self.server.ssl_context
        timeout = self.server.limits.handshake_timeout_s or None  # None: asyncio's 60 s
        self._tls_early = []
        try:
            if context is None:  # the policy says TLS, the listener has none
                raise ssl.SSLError("no TLS context")
            transport = await asyncio.get_running_loop().start_tls(
                old, self, context, server_side=True, ssl_handshake_timeout=timeout
            )
        except Exception as exc:  # any failure (SSLError, reset, timeout): no way back
            self._tls_failed(old, str(exc) or type(exc).__name__)
            return
        if transport is None or self._closed or transport.is_closing():
            self._tls_failed(old, "closed during the handshake")  # e.g. the handshake timeout
            return
        self.transport = transport
        self._sock_fd = -1  # sendfile would bypass TLS
        limits = self.server.limits
        if limits.max_reply_buffer:
            transport.set_write_buffer_limits(high=limits.max_reply_buffer)
        if self.server.tls.verifies_clients:
            self.cert_names = certificate_names(transport.get_extra_info("peercert"))
        early, self._tls_early = self._tls_early, None
        try:
            self.nbd.tls_started()
        except RemoteProtocolError as exc:
            log.warning("%s: protocol error: %s; closing", self.peer, printable(str(exc)))
            self._close()
            return
        for data in early:
            self.nbd.receive_data(data)
        names = (
            "no client certificate"
            if self.cert_names is None
            else ", ".join(sorted(printable(n) for n in self.cert_names))
        )
        log.info("%s: TLS started (%s)", self.peer, names or "a certificate with no name")

    def _tls_failed(self, old: asyncio.Transport, why: str) -> None:
        """The TLS handshake did not finish: close, and clean up here (the
        TLS layer never reports a connection whose handshake failed)."""
        self._tls_early = None
        self.server.refusals.refused(
            self.client_ip or "?", "TLS handshake failed", f" ({self.peer}: {printable(why)})"
        )
        self._closed = True
        old.abort()
        self.connection_lost(None)

    def _capabilities_for(self, target: ExportTarget) -> Capabilities:
        session = self.registry.sessions.get(target.device_id)
        if session is not None:
            return session.stack.capabilities()
        return self.server.capabilities_for_mode(target.access_mode)

    def _export_info(self, target: ExportTarget | VdiskView, caps: Capabilities) -> ExportInfo:
        flags = transmission_flags(caps, self.nbd.structured_replies)
        return ExportInfo(
            size=target.size,
            transmission_flags=flags,
            description=export_description(target),
        )

    def _reject(self, ev: ExportRequest, exc: Exception) -> None:
        code = _FARM_ERRORS_TO_REP.get(type(exc))
        if code is None:
            if not isinstance(exc, OSError | FarmError):
                log.error("%s: export %s failed: %r", self.peer, printable(ev.name), exc)
            code = c.REP_ERR_UNKNOWN
        message = str(exc) or type(exc).__name__
        # The name (and a message that repeats it) is the client's text: escaped.
        log.info("%s: export %s refused: %s", self.peer, printable(ev.name), printable(message))
        out = self.nbd.reject_export(code, message)
        if out:
            self.transport.write(out)
        if ev.legacy:  # NBD_OPT_EXPORT_NAME has no error reply: close
            self._close()

    async def _list_request(self) -> None:
        if not self.server.limits.list_exports:  # names are for those who know them
            self.server.refusals.refused(self.client_ip or "?", "export list asked (off)")
            self.transport.write(self.nbd.send_export_list([]))
            return
        entries = await self.registry.run_db(self.server.list_exports)
        self.transport.write(self.nbd.send_export_list(entries))
