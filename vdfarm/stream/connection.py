"""One NBD client connection: bytes from the socket through the sans-IO
protocol machine to the device's block stack, and replies back.

Rules:
- The hot path (transmission requests) is synchronous on the event loop: one
  parse, one stack call, one transport write; no task per request.
- Handshake steps that need the database (export lookup, lock) run as a task;
  while one runs, parsing stops and bytes just accumulate.
- A request's failure is an NBD error reply, never a dropped connection; only
  a protocol violation (RemoteProtocolError) closes the connection.
- A refused export answers with the NBD error the farm's error type maps to
  (`_FARM_ERRORS_TO_REP`: the port's types, one table) and its one line.
- Slow file I/O runs in a thread (`server.io_executor`) with its reply
  written when it is done; other requests go on meanwhile, which NBD allows
  (replies carry their cookie, any order): flushes (a flush covers the
  writes answered before it was sent); FUA writes, trims and zeroes, done
  as the change on the loop (page cache) then a flush in the thread, the
  reply only once both are done; reads that miss the page cache
  (`try_pread` hands back a ColdRead, vdfarm.block.nowait). Page-cache hits
  stay on the hot path. sendfile(2) blocks on a cold file, so a big read
  is sent with it only when its ranges look cached (`probably_cached`).
  Bytes of deferred reads count against the reply bound like queued ones.
- `leave` (a move order) closes the connection once the requests already
  received are answered; a request that arrives meanwhile gets ESHUTDOWN
  (the NBD spec's "server is shutting down, reconnect").
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
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import ssl
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, Protocol, cast

from vdfarm.block.layer import Capabilities
from vdfarm.block.nowait import ColdRead, probably_cached
from vdfarm.block.raw import pread_exact
from vdfarm.block.stack import CheckedStack
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import RemoteProtocolError, errno_to_nbd
from vdfarm.nbd.events import (
    BadRequest,
    Disconnect,
    ExportRequest,
    ListRequest,
    Request,
    StartTLS,
)
from vdfarm.nbd.limits import ConnectionLimits
from vdfarm.nbd.server import NEED_DATA, ExportInfo, ServerConnection
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
    UnknownExport,
    VdiskView,
)
from vdfarm.stream.sessions import SessionRegistry
from vdfarm.stream.tls import certificate_names

log = logging.getLogger("vdfarm.stream")

VIEW_PREFIX = "vdisk/"  # export "vdisk/NAME": read-only view of a vDisk
_WRITE_NOW = 64 * 1024  # a read reply this large is written without waiting for the batch
_SENDFILE_MIN = 64 * 1024  # reads this large go out with sendfile(2) when they can
# Reads waiting for the io executor may hold this many times the reply bound
# (limits.max_reply_buffer) before parsing stops: a few big cold reads in
# flight at once, as many as the executor has threads.
_DEFERRED_READS_PER_BOUND = 4
_FARM_ERRORS_TO_REP: dict[type[Exception], int] = {
    UnknownExport: c.REP_ERR_UNKNOWN,
    ExportRefused: c.REP_ERR_UNKNOWN,
    FarmUnavailable: c.REP_ERR_UNKNOWN,
    LockConflict: c.REP_ERR_POLICY,
    ViewRefused: c.REP_ERR_POLICY,
    PeerMismatch: c.REP_ERR_POLICY,
    CertificateRefused: c.REP_ERR_POLICY,
    TLSRequired: c.REP_ERR_TLS_REQD,
    TLSUnavailable: c.REP_ERR_POLICY,
    FarmError: c.REP_ERR_UNKNOWN,
}


class ConnectionOwner(Protocol):
    """What a connection needs of the listener that made it (the
    StreamServer), so this module need not import it."""

    @property
    def registry(self) -> SessionRegistry: ...

    @property
    def connections(self) -> set[NBDConnection]: ...

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


class NBDConnection(asyncio.Protocol):
    """asyncio protocol for one client; `server` is the StreamServer."""

    # Set by connection_made (transport) and by the export's acceptance
    # (stack), before anything reads them.
    transport: asyncio.Transport
    stack: CheckedStack

    def __init__(self, server: ConnectionOwner) -> None:
        self.server = server
        self.registry = server.registry
        self.nbd = ServerConnection(max_payload=c.MAX_PAYLOAD, tls=server.tls.policy)
        self._sock_fd = -1  # for sendfile(2) of big reads; -1 for good once TLS starts
        self.session: DeviceSession | None = None
        self.view: VdiskView | None = None  # set when a read-only vDisk view is served
        self.peer = "?"
        self.client_ip: str | None = None
        # Names of the verified client certificate (None: no verified
        # certificate, the address rules apply), and what a device session
        # this connection opens is bound to (None: its address).
        self.cert_names: frozenset[str] | None = None
        self.peer_binding: str | None = None
        self._tls_early: list[bytes] | None = None  # decrypted before tls_started()
        self._leaving: str | None = None  # why the connection is being closed
        self._busy = False  # a handshake task is running
        self._clean = False
        self._closed = False
        self._deferred = 0  # requests whose reply waits for the io executor
        self._deferred_bytes = 0  # of which reads: their lengths
        self._deferred_full = False  # deferred read bytes past the bound: stop parsing
        self._out: list[Any] = []  # replies of the current batch, written at once
        self._admitted = False
        self._handshaking = True  # until the export is accepted for transmission
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._write_paused = False  # replies queued past the bound: stop reading requests
        self._held = False  # reading paused: too much arrived during a handshake step

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        self._sock_fd = sock.fileno() if sock is not None else -1
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.client_ip = peer[0] if peer else None
        address = self.client_ip or "?"
        server = self.server
        refusal = server.admission.refusal(address)
        if refusal is not None:  # closed before the greeting: it holds nothing
            server.refusals.refused(address, refusal)
            self._closed = True
            self.transport.abort()
            return
        server.admission.admitted(address)
        self._admitted = True
        server.connections.add(self)
        limits = server.limits
        if limits.max_reply_buffer:
            self.transport.set_write_buffer_limits(high=limits.max_reply_buffer)
        if limits.handshake_timeout_s:
            self._handshake_timer = asyncio.get_running_loop().call_later(
                limits.handshake_timeout_s, self._handshake_expired
            )
        self.transport.write(self.nbd.start())

    def data_received(self, data: bytes) -> None:
        if self._tls_early is not None:  # the TLS layer's first bytes, before tls_started()
            self._tls_early.append(data)
            return
        self.nbd.receive_data(data)
        if not self._busy:
            if not self._write_paused:
                self._process()
            return
        # A handshake step runs: bytes wait unparsed, up to a bound.
        bound = self.server.limits.max_unparsed_bytes
        if bound and self.nbd.buffered_bytes > bound:
            self._held = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self._tls_early is not None:
            self._tls_early.append(b"")
            return False
        self.nbd.receive_data(b"")
        if not self._busy:
            self._process()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self._admitted:  # refused at accept, or already cleaned up
            return
        self._admitted = False
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.server.admission.left(self.client_ip or "?", self._handshaking)
        self.server.connections.discard(self)
        if self.session is not None:
            self.registry.detach(self.session, self, clean=self._clean)
            self.session = None
        if self.view is not None:
            self.registry.close_view(self.view)
            self.view = None

    def pause_writing(self) -> None:
        """Replies queued past the bound: parse no further request (the ones
        already received wait in the machine) and read no more."""
        self._write_paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._closed and not self._deferred_full:
            self.transport.resume_reading()
            if not self._busy:
                self._process()

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if self._handshaking and not self._closed:
            self.server.refusals.refused(
                self.client_ip or "?", "handshake not finished in time", f" ({self.peer})"
            )
            self._close()

    def _entered_transmission(self) -> None:
        self._handshaking = False
        self.server.admission.handshake_done()
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    # -- event loop over the protocol machine ------------------------------
    def _process(self) -> None:
        """Drain every complete event. Replies of one batch leave in one
        writelines (one writev), not one send per request."""
        nbd = self.nbd
        next_event: Callable[[], Any] = nbd.next_event
        out = self._out
        try:
            while not self._closed and not self._write_paused and not self._deferred_full:
                ev = next_event()
                if ev is NEED_DATA:
                    break
                if type(ev) is Request:
                    self._request(ev, out)
                    continue
                pending = nbd.data_to_send()
                if pending:
                    out.append(pending)
                if type(ev) is BadRequest:
                    out.append(nbd.reply_error(ev.cookie, ev.error, ev.message))
                elif type(ev) is ExportRequest:
                    self._write_batch()
                    self._start_task(self._export_request(ev))
                    return
                elif type(ev) is ListRequest:
                    self._write_batch()
                    self._start_task(self._list_request())
                    return
                elif type(ev) is StartTLS:
                    # No plaintext may be read past STARTTLS: stop reading
                    # before the ACK (already in `out`) leaves.
                    self.transport.pause_reading()
                    self._write_batch()
                    self._start_task(self._start_tls())
                    return
                elif type(ev) is Disconnect:
                    self._clean = ev.clean
                    self._write_batch()
                    if not self._deferred:  # else the last deferred reply closes
                        self._close()
                    return
            pending = nbd.data_to_send()
            if pending:
                out.append(pending)
            self._write_batch()
        except RemoteProtocolError as exc:
            self._write_batch()
            log.warning("%s: protocol error: %s; closing", self.peer, printable(str(exc)))
            self._close()

    def _write_batch(self) -> None:
        out = self._out
        if out:
            if not self._closed:
                self.transport.writelines(out)
            out.clear()

    def _start_task(self, coro: Coroutine[Any, Any, None]) -> None:
        self._busy = True
        task = asyncio.get_running_loop().create_task(coro)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._busy = False
        if self._held:
            self._held = False
            if not self._closed:
                self.transport.resume_reading()
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: handshake step failed: %r", self.peer, task.exception())
            self._close()
            return
        if not self._closed:
            self._process()

    def _close(self) -> None:
        if not self._closed:
            self.transport.close()

    def leave(self, reason: str) -> None:
        """Close this connection after the requests already received are
        answered (deferred ones included); later ones get ESHUTDOWN."""
        if self._closed:
            return
        self._leaving = reason
        log.info("%s: closing: %s", self.peer, reason)
        if not self._deferred:
            self._close()

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
            description=f"vDisk {target.vdisk_name} ({target.access_mode})",
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

    # -- transmission ------------------------------------------------------
    def _request(self, req: Request, out: list[Any]) -> None:
        cmd = req.command
        nbd = self.nbd
        stack = self.stack
        if self._leaving is not None:
            out.append(nbd.reply_error(req.cookie, c.NBD_ESHUTDOWN, self._leaving))
            return
        try:
            if cmd == c.CMD_READ:
                if req.length >= _SENDFILE_MIN and self._sock_fd >= 0:
                    ranges = stack.file_ranges(req.offset, req.length)
                    if ranges is not None and probably_cached(ranges):
                        out.append(nbd.reply_read_header(req.cookie, req.offset, req.length))
                        self._send_file_ranges(ranges, out)
                        return
                data = stack.try_pread(req.offset, req.length)
                if data.__class__ is ColdRead:
                    self._read_cold(req, data)
                    return
                out.append(nbd.reply_read_header(req.cookie, req.offset, req.length))
                out.append(data)
                if req.length >= _WRITE_NOW:  # big replies leave at once
                    self.transport.writelines(out)
                    out.clear()
                return
            if cmd == c.CMD_WRITE:
                # A WRITE event always carries its payload (vdfarm.nbd.events); no
                # check on the hot path for what the machine guarantees.
                # FUA: the write here (page cache), the sync in a thread.
                if req.flags & c.CMD_FLAG_FUA:
                    stack.check_fua("write")
                    stack.pwrite(req.offset, req.data)  # type: ignore[arg-type]
                    self._flush(req.cookie)
                    return
                stack.pwrite(req.offset, req.data)  # type: ignore[arg-type]
            elif cmd == c.CMD_FLUSH:
                self._flush(req.cookie)
                return
            elif cmd == c.CMD_WRITE_ZEROES:
                fua = req.flags & c.CMD_FLAG_FUA
                if fua:
                    stack.check_fua("write zeroes")
                stack.zero(
                    req.offset,
                    req.length,
                    may_trim=not (req.flags & c.CMD_FLAG_NO_HOLE),
                    fast=bool(req.flags & c.CMD_FLAG_FAST_ZERO),
                )
                if fua:
                    self._flush(req.cookie)
                    return
            elif cmd == c.CMD_TRIM:
                fua = req.flags & c.CMD_FLAG_FUA
                if fua:
                    stack.check_fua("trim")
                stack.trim(req.offset, req.length)
                if fua:
                    self._flush(req.cookie)
                    return
            elif cmd == c.CMD_CACHE:
                stack.cache(req.offset, req.length)
            elif cmd == c.CMD_BLOCK_STATUS:
                extents = stack.extents(req.offset, req.length)
                out.append(
                    nbd.reply_block_status(req.cookie, [(e.length, e.flags) for e in extents])
                )
                return
            else:
                out.append(nbd.reply_error(req.cookie, c.NBD_EINVAL, f"unsupported command {cmd}"))
                return
        except OSError as exc:
            if (
                exc.errno == errno.ENOSPC
                and self.session is not None
                and req.offset + req.length <= stack.size
            ):  # not "past the end"
                self.registry.cache_full(self.session)
            out.append(
                nbd.reply_error(req.cookie, errno_to_nbd(exc.errno or 0), exc.strerror or str(exc))
            )
            return
        except Exception as exc:
            log.exception("%s: request %d failed", self.peer, cmd)
            out.append(nbd.reply_error(req.cookie, c.NBD_EIO, str(exc)))
            return
        out.append(nbd.reply_ok(req.cookie))

    def _send_file_ranges(self, ranges: list[tuple[int, int, int]], out: list[Any]) -> None:
        """Send `out` (ending with a read reply header), then the file ranges
        with sendfile(2): no copy through Python. Only while nothing is
        queued in the transport, so bytes stay in order; whatever the socket
        does not take at once is read and queued in the transport instead."""
        transport = self.transport
        transport.writelines(out)
        out.clear()
        i = 0
        if transport.get_write_buffer_size() == 0:
            sock_fd = self._sock_fd
            for i, (fd, offset, length) in enumerate(ranges):
                while length:
                    try:
                        sent = os.sendfile(sock_fd, fd, offset, length)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    if sent == 0:
                        break
                    offset += sent
                    length -= sent
                if length:
                    ranges = [(fd, offset, length), *ranges[i + 1 :]]
                    break
            else:
                return
        transport.writelines([pread_exact(fd, offset, length) for fd, offset, length in ranges])

    def _flush(self, cookie: int) -> None:
        """Flush in the io executor; answer `cookie` when it is done (a FLUSH,
        or the sync of a FUA change already made)."""
        self._defer(cookie, self.stack.flush, 0, None)

    def _read_cold(self, req: Request, cold: ColdRead) -> None:
        """A read that missed the page cache: run it in the io executor and
        answer it when done. Past the bound of deferred read bytes, parse no
        further request until some are answered."""
        length = req.length
        self._defer(req.cookie, cold, length, req.offset)
        self._deferred_bytes += length
        if self.server.limits.max_reply_buffer and self._deferred_bytes > self._deferred_bound():
            self._deferred_full = True
            self.transport.pause_reading()

    def _defer(
        self,
        cookie: int,
        work: Callable[[], Any],
        read_length: int,
        read_offset: int | None,
    ) -> None:
        """Run `work` in the io executor; then write its reply: the data of
        a read (`read_offset` not None), else OK; its error as an NBD error.
        The last deferred reply closes a connection that is ending."""
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.server.io_executor, work)
        self._deferred += 1

        def done(f: asyncio.Future[Any]) -> None:
            self._deferred -= 1
            if read_offset is not None:
                self._deferred_bytes -= read_length
            if self._closed:
                return
            exc = OSError(errno.EIO, "cancelled") if f.cancelled() else f.exception()
            nbd = self.nbd
            if exc is not None:
                err = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
                if not isinstance(exc, OSError):
                    log.error("%s: deferred request failed: %r", self.peer, exc)
                self.transport.write(nbd.reply_error(cookie, errno_to_nbd(err), str(exc)))
            elif read_offset is not None:
                header = nbd.reply_read_header(cookie, read_offset, read_length)
                self.transport.writelines([header, f.result()])
            else:
                self.transport.write(nbd.reply_ok(cookie))
            if (self._clean or self._leaving) and not self._deferred:
                self._close()
                return
            if self._deferred_full and self._deferred_bytes <= self._deferred_bound():
                self._deferred_full = False
                if not self._write_paused:
                    self.transport.resume_reading()
                    if not self._busy:
                        self._process()

        fut.add_done_callback(done)

    def _deferred_bound(self) -> int:
        return self.server.limits.max_reply_buffer * _DEFERRED_READS_PER_BOUND
