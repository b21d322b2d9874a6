"""The device's failover session: one upstream at a time, failover, and
the device-side write cache. The heart of the agent (vdfarm.agent.session
adds the probe and the moves on top).

Job: answer the local clients' requests — queued on the current upstream
at once (`submit`, the fast path), or through `handle` (the slow path:
device-cache writes and merged reads, no upstream, a request sent again);
fail the upstream when its connection breaks or a request stays
unanswered past the I/O timeout; then log in again, connect to the
answer's server, check that it serves the same copy as the first login
promised, and send again every request that had no answer. The local
client sees a pause, never an error.

Rules:
- Never serve bytes of another copy: a server whose export size or
  identity (vDisk, version, sha256: vdfarm.agent.identity) differs from the
  first login's is excluded and the next is tried; with none left, wait.
  The device keeps the version it booted: failover logins ask for it (the
  login function given), and the farm serves it even after a promotion. A
  login naming that same vDisk, version and size with another sha256 (a
  merge re-filed the version: same content, new file) becomes the hash
  servers are checked against.
- A failed server is excluded from the next logins until the farm says no
  server is left (then every server is tried again). A server that failed
  in an earlier failover, up to FAILED_MEMORY_S seconds ago, is passed
  over when the login names it and lists an alternative that did not: the
  farm counts a dead or hung server as up until its heartbeat times out,
  and each such server it names costs the device a connect and a
  back-off. A connection that ends after NBD_ESHUTDOWN (a move order)
  excludes nobody: the login names the new server. NBD_ESHUTDOWN replies
  are never passed on: the request is sent again.
- `failover` False (private mode, maintenance, server-side cache), or a
  version with no fixed sha256 (nothing to check another copy against):
  the device stays on its first server; the agent reconnects to it when it
  returns, and never logs in elsewhere.
- No server: retry with back-off (0.2 s doubling to 5 s); waiting requests
  wait, up to `give_up` seconds since the outage began, then get EIO.
- A device-side cache (write_cache_type "device-..."): WRITE, WRITE_ZEROES
  and TRIM never go upstream; reads merge the cache and the upstream; FLUSH
  is answered here (the cache is volatile by design: empty at every boot).
  A write that does not fit gets ENOSPC, with a loud log line and the
  status flag `cache_full`; earlier writes stay intact.
- Every failover is recorded (time, from, to, reason, pause, retried
  requests) and handed to `on_failover` once its pause is known: at the
  first good reply after it, or when its new server fails before giving
  any (then the next failover's pause counts from the same stall, and so
  does `give_up`).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from vdfarm.agent.identity import Identity, identity_problem
from vdfarm.agent.login import LoginAnswer, LoginError, NoServer, ServerRef
from vdfarm.agent.session_types import (
    Client,
    Context,
    FailoverRecord,
    SessionOptions,
    WriteCache,
    now_iso,
)
from vdfarm.agent.upstream import (
    LOST,
    ConnectionLost,
    Payload,
    Reply,
    Upstream,
    UpstreamRefused,
)
from vdfarm.nbd import constants as c
from vdfarm.nbd.errors import errno_to_nbd

log = logging.getLogger("vdfarm.agent")

WATCH_PERIOD_S = 0.1
FAILED_MEMORY_S = 30.0  # how long a failed server is passed over when the login names it
CACHE_FLAGS = (
    c.FLAG_SEND_FLUSH
    | c.FLAG_SEND_FUA
    | c.FLAG_SEND_TRIM
    | c.FLAG_SEND_WRITE_ZEROES
    | c.FLAG_CAN_MULTI_CONN
)
PASSED_FLAGS = (
    c.FLAG_READ_ONLY
    | c.FLAG_SEND_FLUSH
    | c.FLAG_SEND_FUA
    | c.FLAG_ROTATIONAL
    | c.FLAG_SEND_TRIM
    | c.FLAG_SEND_WRITE_ZEROES
    | c.FLAG_SEND_CACHE
    | c.FLAG_SEND_FAST_ZERO
)

DEFAULT_OPTIONS = SessionOptions()

LoginFn = Callable[[list[str]], Awaitable[LoginAnswer]]
ConnectFn = Callable[[ServerRef, Callable[[Upstream], None]], Awaitable[Upstream]]


class FailoverSession:
    """See the module docstring. `start` connects; `submit` and `handle`
    serve requests. vdfarm.agent.session.Session adds probes and moves."""

    def __init__(
        self,
        first: LoginAnswer,
        login: LoginFn,
        connect: ConnectFn,
        options: SessionOptions = DEFAULT_OPTIONS,
        cache: WriteCache | None = None,
        on_change: Callable[[], None] = lambda: None,
        on_failover: Callable[[FailoverRecord], None] = lambda record: None,
    ) -> None:
        self.first = first
        self.expected = Identity(first.vdisk, first.version, first.sha256, first.size)
        self.may_fail_over = first.failover and first.sha256 is not None
        self.options = options
        self.cache = cache
        self._login = login
        self._connect = connect
        self._on_change = on_change
        self._on_failover = on_failover
        self._up: Upstream | None = None
        self._up_changed = asyncio.Event()  # set (and replaced) whenever _up changes
        self._ready = asyncio.Event()
        self._establishing: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._outage_since: float | None = time.monotonic()
        self._dirty: set[Client] = set()  # clients with replies queued
        self._tasks: set[asyncio.Task[None]] = set()  # requests on the slow path
        self._failed_at: dict[str, float] = {}  # server -> when it last failed (monotonic)
        self._unsettled: FailoverRecord | None = None  # awaiting its first good reply
        self._write_lock = asyncio.Lock()
        self._closed = False
        self.transmission_flags = 0
        self.failovers: list[FailoverRecord] = []
        self.retried_requests = 0
        self.cache_full = False
        self.last_error: str | None = None

    # -- life --------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.first.size

    @property
    def server(self) -> str | None:
        return self._up.name if self._up is not None else None

    async def start(self) -> None:
        """Connect to the first login's server (or, if it cannot serve, the
        next one); returns once an upstream is up. Waits while none is."""
        self._establishing = asyncio.get_running_loop().create_task(
            self._establish(first_target=self.first.server, exclude=None)
        )
        await self._ready.wait()
        if self.cache is not None:
            self.transmission_flags = CACHE_FLAGS
        else:
            assert self._up is not None
            flags = self._up.export.transmission_flags & PASSED_FLAGS
            self.transmission_flags = flags | c.FLAG_CAN_MULTI_CONN  # one upstream for all
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def close(self) -> None:
        self._closed = True
        for task in (self._watchdog, self._establishing, *self._tasks):
            if task is not None:
                task.cancel()
        if self._up is not None:
            await self._up.close()
            self._up = None
        close_cache = getattr(self.cache, "close", None)  # a disk tier has a file
        if close_cache is not None:
            close_cache()

    # -- requests: the fast path -------------------------------------------
    def submit(
        self,
        client: Client,
        cookie: int,
        cmd: int,
        flags: int,
        offset: int,
        length: int,
        data: Any,
    ) -> None:
        """Serve one local request; CLIENT.answer gets its reply later (then
        CLIENT.flush, at the end of a batch of replies). The common case —
        an upstream is up, the request goes there whole — is queued on the
        upstream at once (sent by `flush`, after the client's batch); the
        rest (device cache writes and mixed reads, no upstream, CACHE) runs
        as a task through `handle`."""
        up = self._up
        if up is not None:
            cache = self.cache
            if (
                cmd != c.CMD_CACHE
                if cache is None
                else cmd == c.CMD_READ
                and length > 0
                and offset + length <= self.size
                and cache.all_upstream(offset, length)
            ):
                context = (client, cookie, cmd, flags, offset, length, data, up)
                up.send(cmd, flags, offset, length, data, self._upstream_reply, context)
                return
        self._start_slow(client, cookie, cmd, flags, offset, length, data, None)

    def flush(self) -> None:
        """Send the requests `submit` queued."""
        up = self._up
        if up is not None:
            up.flush()

    def _upstream_reply(self, context: Context, error: int, payload: Payload | None) -> None:
        """A fast-path request's reply: to its client; a lost connection or
        NBD_ESHUTDOWN goes to the slow path, which sends it again."""
        client, cookie, cmd, flags, offset, length, data, up = context
        if error == LOST or error == c.NBD_ESHUTDOWN:
            self._start_slow(client, cookie, cmd, flags, offset, length, data, (up, error))
            return
        if self._unsettled is not None:
            self._settle()
        client.answer(cookie, cmd, offset, length, error, payload)
        self._dirty.add(client)

    def _flush_clients(self) -> None:
        """Write every client's queued replies (an upstream's batch ended)."""
        dirty = self._dirty
        if dirty:
            self._dirty = set()
            for client in dirty:
                client.flush()

    def _start_slow(
        self,
        client: Client,
        cookie: int,
        cmd: int,
        flags: int,
        offset: int,
        length: int,
        data: Any,
        failed: tuple[Upstream, int] | None,
    ) -> None:
        task = asyncio.get_running_loop().create_task(
            self._serve(client, cookie, cmd, flags, offset, length, data, failed)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self,
        client: Client,
        cookie: int,
        cmd: int,
        flags: int,
        offset: int,
        length: int,
        data: Any,
        failed: tuple[Upstream, int] | None,
    ) -> None:
        try:
            if failed is None:
                error, payload = await self.handle(cmd, flags, offset, length, data)
            else:
                error, payload = await self._call(cmd, flags, offset, length, data, failed)
        except OSError as exc:  # the device cache's disk, for one
            log.error("local request %d failed: %s", cmd, exc)
            error, payload = errno_to_nbd(exc.errno or 0), b""
        except Exception:
            log.exception("local request %d failed", cmd)
            error, payload = c.NBD_EIO, b""
        client.answer(cookie, cmd, offset, length, error, [payload] if payload else None)
        client.flush()

    # -- requests: the slow path -------------------------------------------
    async def handle(
        self, cmd: int, flags: int, offset: int, length: int, data: bytes | None
    ) -> Reply:
        """Serve one local request: (NBD error, data of a read)."""
        if cmd == c.CMD_CACHE:
            return 0, b""  # advice; upstream, CACHE is the agent's own probe
        cache = self.cache
        if cache is None:
            return await self._call(cmd, flags, offset, length, data)
        if cmd == c.CMD_FLUSH:
            return 0, b""  # every answered write is in the cache already
        if cmd != c.CMD_READ and offset + length > self.size:
            return c.NBD_ENOSPC, b""
        if cmd == c.CMD_READ:
            return await self._cached_read(cache, offset, length)
        if cmd in (c.CMD_WRITE, c.CMD_WRITE_ZEROES):
            return await self._cached_write(cache, cmd, offset, length, data)
        return 0, b""  # TRIM and CACHE are advice; the cache keeps what it has

    async def _cached_read(self, cache: WriteCache, offset: int, length: int) -> Reply:
        if offset + length > self.size:
            return c.NBD_EINVAL, b""
        pieces = cache.read_plan(offset, length)
        if len(pieces) == 1 and pieces[0][2] is None:
            return await self._call(c.CMD_READ, 0, offset, length, None)
        missing = [(off, n) for off, n, data in pieces if data is None]
        replies = await asyncio.gather(
            *(self._call(c.CMD_READ, 0, off, n, None) for off, n in missing)
        )
        for error, _ in replies:
            if error:
                return error, b""
        fetched = iter(replies)
        return 0, b"".join(data if data is not None else next(fetched)[1] for _, _, data in pieces)

    async def _cached_write(
        self, cache: WriteCache, cmd: int, offset: int, length: int, data: bytes | None
    ) -> Reply:
        async with self._write_lock:  # fills and write of one request, not interleaved
            fills: dict[int, bytes] = {}
            for off, n in cache.needs_fill(offset, length):
                error, old = await self._call(c.CMD_READ, 0, off, n, None)
                if error:
                    return error, b""
                fills[off] = old
            try:
                if cmd == c.CMD_WRITE:
                    assert data is not None
                    cache.write(offset, bytes(data), fills)
                else:
                    cache.zero(offset, length, fills)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                self._cache_is_full(offset, length)
                return c.NBD_ENOSPC, b""
        return 0, b""

    def _cache_is_full(self, offset: int, length: int) -> None:
        log.error(
            "device cache FULL: the write of %d bytes at %d got ENOSPC "
            "(earlier writes are intact; raise --cache-size or use a disk cache)",
            length,
            offset,
        )
        self.last_error = "device write cache full"
        if not self.cache_full:
            self.cache_full = True
        self._on_change()

    async def _call(
        self,
        cmd: int,
        flags: int,
        offset: int,
        length: int,
        data: bytes | None,
        failed: tuple[Upstream, int] | None = None,
    ) -> Reply:
        """One request upstream, sent again after every failover until a
        server answers it; EIO only when `give_up` ran out. FAILED: it was
        sent already, to that upstream, which answered that (LOST or
        NBD_ESHUTDOWN)."""
        counted_in: FailoverRecord | None = None
        while True:
            payload = b""
            if failed is not None:
                up, error = failed
                failed = None
                if error == LOST:
                    self._upstream_lost(up)
            else:
                current = self._up
                if current is None:
                    if not await self._wait_for_upstream():
                        return c.NBD_EIO, b""
                    continue
                up = current
                try:
                    error, payload = await up.request(cmd, offset, length, data, flags)
                except ConnectionLost:
                    self._upstream_lost(up)
                    error = LOST
            if error == c.NBD_ESHUTDOWN:
                if await self._after_shutdown_reply(up):
                    continue  # waited for the switch to another server
                if self._up is not None and self._up is not up:  # switched meanwhile
                    continue
            if error == LOST or error == c.NBD_ESHUTDOWN:
                record = self.failovers[-1] if self.failovers else None
                if (
                    record is not None
                    and record is not counted_in
                    and record.from_server == up.name
                ):
                    record.retried += 1
                    self.retried_requests += 1
                    counted_in = record
                continue
            if self._unsettled is not None:
                self._settle()
            return error, payload

    async def _wait_for_upstream(self) -> bool:
        """Wait for an upstream; False once `give_up` seconds of outage passed."""
        give_up = self.options.give_up
        if give_up is None:
            await self._ready.wait()
            return True
        since = self._outage_since if self._outage_since is not None else time.monotonic()
        remaining = give_up - (time.monotonic() - since)
        if remaining <= 0:
            return False
        try:
            await asyncio.wait_for(self._ready.wait(), remaining)
        except TimeoutError:
            return False
        return True

    # -- failure and failover ----------------------------------------------
    def _upstream_lost(self, up: Upstream) -> None:
        """UP's connection broke (its on_lost callback, or a request saw it)."""
        if up is self._up:
            self._fail(up, up.lost or "connection lost", exclude=not up.saw_shutdown)

    def _fail(self, up: Upstream, reason: str, exclude: bool) -> None:
        """Drop UP (if it is still the current upstream) and start a failover."""
        if up is not self._up or self._closed:
            return
        now = time.monotonic()
        oldest = up.oldest_sent()
        stalled_from = min(oldest, now) if oldest is not None else now
        self._set_up(None)
        self._ready.clear()
        self._outage_since = now
        unanswered = self._unsettled  # the failover to UP, which never answered
        if unanswered is not None:
            self._settle(now)  # its pause: until UP failed too
            stalled_from = min(stalled_from, unanswered.stalled_from)
            self._outage_since = stalled_from  # no server has answered since
        record = FailoverRecord(
            at=now_iso(),
            from_server=up.name,
            to_server=None,
            reason=reason,
            pause_ms=None,
            retried=0,
            stalled_from=stalled_from,
        )
        self.failovers.append(record)
        self.last_error = f"{up.name}: {reason}"
        log.warning("server %s failed: %s; failing over", up.name, reason)
        up.abort(reason)
        self._establishing = asyncio.get_running_loop().create_task(
            self._establish(first_target=None, exclude=up.name if exclude else None)
        )
        self._on_change()

    async def _establish(self, first_target: ServerRef | None, exclude: str | None) -> None:
        """Find a server with the right copy and make it the upstream.
        FIRST_TARGET: try it before any login (the start). Never raises."""
        excluded: set[str] = set()  # the servers this failover saw fail
        if exclude is not None and self.may_fail_over:
            excluded.add(exclude)
            self._remember_failed(exclude)
        delay = 0.0
        target = first_target
        while not self._closed:
            if delay:
                await asyncio.sleep(delay)
            delay = min(max(delay * 2, self.options.first_retry), self.options.max_retry)
            if target is None:
                target = await self._choose(excluded)
                if target is None:
                    continue
            up = await self._open(target)
            if up is not None:
                self._install(up)
                return
            if self.may_fail_over:
                excluded.add(target.name)
                self._remember_failed(target.name)
            target = None

    def _remember_failed(self, name: str) -> None:
        self._failed_at[name] = time.monotonic()

    def _failed_lately(self) -> set[str]:
        """Servers that failed in the last FAILED_MEMORY_S seconds."""
        now = time.monotonic()
        for name, at in list(self._failed_at.items()):
            if now - at > FAILED_MEMORY_S:
                del self._failed_at[name]
        return set(self._failed_at)

    async def _choose(self, excluded: set[str]) -> ServerRef | None:
        """The server to try next: the home without failover, else the
        login's answer (None after a failed login) or, if that failed
        lately, its first alternative that did not. EXCLUDED: the servers
        this failover saw fail."""
        if not self.may_fail_over:
            return self.first.server
        try:
            answer = await self._login(sorted(excluded))
        except NoServer as exc:
            self._note(f"no server can serve the device: {exc}")
            excluded.clear()  # try them all again next time
            return None
        except LoginError as exc:
            self._note(f"login failed: {exc}")
            return None
        self._adopt_hash(answer)
        if answer.server.name in excluded:  # the farm did not honour the exclusion
            self._note(f"login named excluded server {answer.server.name}")
            excluded.clear()
            return None
        lately = self._failed_lately()
        for server in (answer.server, *answer.alternatives):
            if server.name not in lately and server.name not in excluded:
                return server
        return answer.server

    def _adopt_hash(self, answer: LoginAnswer) -> None:
        """Check servers against ANSWER's sha256 if it names the expected
        vDisk, version and size with a new one (see the module rules)."""
        e = self.expected
        same = (answer.vdisk, answer.version, answer.size) == (e.vdisk, e.version, e.size)
        if same and answer.sha256 is not None and answer.sha256 != e.sha256:
            log.warning("version %d of vDisk %s has a new sha256 (re-filed)", e.version, e.vdisk)
            self.expected = replace(e, sha256=answer.sha256)

    async def _open(self, target: ServerRef) -> Upstream | None:
        """An upstream to TARGET serving the expected copy, or None."""
        try:
            up = await self._connect(target, self._upstream_lost)
        except UpstreamRefused as exc:
            self._note(str(exc))
            return None
        up.on_batch_end = self._flush_clients
        problem = identity_problem(self.expected, up.size, up.export.description)
        if problem is not None:
            self._note(f"{target.name} refused: {problem}")
            await up.close()
            return None
        if up.lost is not None:
            self._note(f"{target.name}: {up.lost}")
            return None
        return up

    def _set_up(self, up: Upstream | None) -> None:
        """Make UP the upstream; wake whoever waits for a change."""
        self._up = up
        changed, self._up_changed = self._up_changed, asyncio.Event()
        changed.set()

    async def _after_shutdown_reply(self, up: Upstream) -> bool:
        """UP answered a request NBD_ESHUTDOWN: leave it, without excluding
        it (the login names the server that takes over). True if the
        request waited for a switch to another server (never, here)."""
        self._fail(up, "the server is moving this device (NBD_ESHUTDOWN)", exclude=False)
        return False

    def _install(self, up: Upstream) -> None:
        self._set_up(up)
        self._outage_since = None
        self._ready.set()
        if self.failovers and self.failovers[-1].to_server is None:
            record = self.failovers[-1]
            record.to_server = up.name
            self._unsettled = record
            log.warning("failed over from %s to %s", record.from_server, up.name)
        else:
            log.info("streaming from %s", up.name)
        self._on_change()

    def _settle(self, at: float | None = None) -> None:
        """The first good reply after a failover (or, AT, the failure of its
        new server before any): its pause is known."""
        record = self._unsettled
        if record is None:
            return
        self._unsettled = None
        end = time.monotonic() if at is None else at
        record.pause_ms = int((end - record.stalled_from) * 1000)
        log.warning(
            "failover %s -> %s: pause %d ms, %d requests sent again",
            record.from_server,
            record.to_server,
            record.pause_ms,
            record.retried,
        )
        self._on_change()
        self._on_failover(record)

    def _note(self, message: str) -> None:
        if message != self.last_error:
            log.warning("%s", message)
            self.last_error = message
            self._on_change()

    async def _watch(self) -> None:
        """Fail the upstream when its oldest request is unanswered past io_timeout."""
        timeout = self.options.io_timeout
        period = min(WATCH_PERIOD_S, timeout / 4)
        while not self._closed:
            await asyncio.sleep(period)
            up = self._up
            if up is None:
                continue
            oldest = up.oldest_sent()
            if oldest is not None and up.lost is None and time.monotonic() - oldest > timeout:
                self._fail(up, f"a request unanswered for over {timeout:g} s", exclude=True)

    # -- status ------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "device": self.first.device,
            "vdisk": self.first.vdisk,
            "version": self.first.version,
            "server": self.server,
            "state": "streaming" if self._up is not None else "waiting for a server",
            "failover_allowed": self.may_fail_over,
            "write_cache_type": self.first.write_cache_type,
            "failovers": [record.plain() for record in self.failovers],
            "retried_requests": self.retried_requests,
            "cache": self.cache.stats() if self.cache is not None else None,
            "cache_full": self.cache_full,
            "last_error": self.last_error,
        }
