"""The event loop over one connection's protocol machine and its
transmission requests (the hot path). `RequestPath` is NBDConnection's base
(vdfarm.stream.connection), itself built on HandshakeSteps.

Rules:
- The hot path (transmission requests) is synchronous on the event loop: one
  parse, one stack call, one transport write; no task per request.
- A handshake step (vdfarm.stream.handshake_steps) runs as a task; while one
  runs, parsing stops and bytes just accumulate.
- A request's failure is an NBD error reply, never a dropped connection; only
  a protocol violation (RemoteProtocolError) closes the connection.
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
- While the connection is leaving (`leave`, a move order) a request gets
  ESHUTDOWN; the last deferred reply closes it. During a move's handover
  (`hand_over`) only CACHE gets ESHUTDOWN (the agent's probe; checked in
  the CACHE branch, off the read and write path).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from vdfarm.block.nowait import ColdRead, probably_cached
from vdfarm.block.raw import pread_exact
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
from vdfarm.nbd.server import NEED_DATA
from vdfarm.nbd.text import printable
from vdfarm.stream.handshake_steps import HandshakeSteps

log = logging.getLogger("vdfarm.stream")

_WRITE_NOW = 64 * 1024  # a read reply this large is written without waiting for the batch
_SENDFILE_MIN = 64 * 1024  # reads this large go out with sendfile(2) when they can
# Reads waiting for the io executor may hold this many times the reply bound
# (limits.max_reply_buffer) before parsing stops: a few big cold reads in
# flight at once, as many as the executor has threads.
_DEFERRED_READS_PER_BOUND = 4


class RequestPath(HandshakeSteps):
    """The event loop and request half of NBDConnection."""

    # Set by NBDConnection.__init__.
    _leaving: str | None
    _moving: str | None
    _busy: bool
    _clean: bool
    _deferred: int
    _deferred_bytes: int
    _deferred_full: bool
    _out: list[Any]
    _write_paused: bool
    _held: bool

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
                if self._moving is not None:  # the agent's probe: tell it to move
                    out.append(nbd.reply_error(req.cookie, c.NBD_ESHUTDOWN, self._moving))
                    return
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
