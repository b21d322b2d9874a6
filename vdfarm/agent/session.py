"""The device's session with the farm: the failover session
(vdfarm.agent.failover) plus the probe and the moves.

Job: probe the upstream, so a hung server is found while the device is
idle and a move order when its server tells; follow a move order from one
server to the next between two requests.

Rules:
- Idle or not, the upstream is probed every PROBE_PERIOD_S with a small
  NBD_CMD_CACHE (the device's own CACHE requests are advice, answered
  without the server): an unanswered probe fails a hung server like any
  request, and a server carrying out a move order answers it with
  NBD_ESHUTDOWN while it still serves everything else
  (vdfarm.stream.sessions, the handover).
- Then the agent logs in (no server excluded: the login names the new
  server), connects and checks the new server while the old one keeps
  serving, and switches between two requests: later requests go to the new
  server, those on their way are answered by the old one, which is then
  left with NBD_CMD_DISC (the spec's soft disconnect); one still
  unanswered after the I/O timeout is failed and sent again. A request
  answered NBD_ESHUTDOWN (a server closing the connection) waits for the
  switch, or a failover, and is sent again. The handover gives up when the
  old server is no longer the upstream or answers the probe again (the
  order was cancelled).
- Each move is recorded (time, from, to, the time from the order's first
  sign to the switch, requests sent again); a move is not a failover.
- Without failover (private mode, maintenance, server-side cache, no
  fixed sha256) a move order is not followed: the server closes the
  connection when its handover ends, the agent reconnects to it, and that
  new session drops the order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from vdfarm.agent.failover import FailoverSession
from vdfarm.agent.login import LoginError
from vdfarm.agent.session_types import MoveRecord, now_iso
from vdfarm.agent.upstream import ConnectionLost, Upstream
from vdfarm.nbd import constants as c

log = logging.getLogger("vdfarm.agent")

PROBE_PERIOD_S = 0.5
PROBE_LENGTH = 4096
SETTLE_PROBE_S = 0.02  # probe this often while a failover waits for its first reply


class Session(FailoverSession):
    """See the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prober: asyncio.Task[None] | None = None
        self._moving_from: Upstream | None = None  # its server told us to move
        self._move_started = 0.0  # monotonic: the first sign of the move order
        self._move_retried = 0
        self._handover: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self.moves: list[MoveRecord] = []

    async def start(self) -> None:
        await super().start()
        self._prober = asyncio.get_running_loop().create_task(self._probe_forever())

    async def close(self) -> None:
        for task in (self._prober, self._handover, *self._retiring):
            if task is not None:
                task.cancel()
        await super().close()

    def _set_up(self, up: Upstream | None) -> None:
        self._moving_from = None
        super()._set_up(up)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "moves": [record.plain() for record in self.moves]}

    # -- move orders --------------------------------------------------------
    async def _after_shutdown_reply(self, up: Upstream) -> bool:
        """UP answered a request NBD_ESHUTDOWN: hand over (or, without
        failover, leave UP as the failover session does); wait for the
        switch when handing over."""
        self._move_signalled(up)
        if self._moving_from is not up:
            return False
        self._move_retried += 1
        self.retried_requests += 1
        await self._switched_from(up)
        return True

    def _move_signalled(self, up: Upstream) -> None:
        """UP answered NBD_ESHUTDOWN: its server carries out a move order.
        Hand over to the new server while UP still serves; without
        failover, or with no way to hand over, leave UP now as before."""
        if up is not self._up or self._closed or self._moving_from is up:
            return
        if not self.may_fail_over:
            self._fail(up, "the server is moving this device (NBD_ESHUTDOWN)", exclude=False)
            return
        self._moving_from = up
        self._move_started = time.monotonic()
        self._move_retried = 0
        log.info("server %s is moving this device: handing over", up.name)
        self._handover = asyncio.get_running_loop().create_task(self._hand_over(up))

    async def _switched_from(self, old: Upstream) -> None:
        """Wait until OLD is no longer the upstream (switched, or failed)."""
        while self._up is old and not self._closed:
            await self._up_changed.wait()

    async def _hand_over(self, old: Upstream) -> None:
        """Log in, connect to the server the login names and check it, while
        OLD serves; then switch. Gives up when OLD is no longer the upstream
        or its server stops telling us to move (the order was cancelled)."""
        delay = 0.0
        while self._moving_from is old and self._up is old and not self._closed:
            if delay:
                await asyncio.sleep(delay)
                if self._moving_from is not old or self._up is not old:
                    return
            delay = min(max(delay * 2, self.options.first_retry), self.options.max_retry)
            try:
                answer = await self._login([])
            except LoginError as exc:
                self._note(f"move from {old.name}: login failed: {exc}")
                continue
            if answer.server.name == old.name:
                self._note(f"move from {old.name}: the login still names it")
                continue
            new = await self._open(answer.server)
            if new is None:
                continue
            if self._up is not old or self._closed:
                await new.close()
                return
            self._switch(old, new)
            return

    def _switch(self, old: Upstream, new: Upstream) -> None:
        """NEW takes every later request; OLD answers those on their way, then
        is left (soft disconnect)."""
        switch_ms = int((time.monotonic() - self._move_started) * 1000)
        retried = self._move_retried
        self._set_up(new)
        record = MoveRecord(now_iso(), old.name, new.name, switch_ms, retried)
        self.moves.append(record)
        log.warning(
            "moved from %s to %s (a move order): switched %d ms after the order showed, "
            "%d requests sent again",
            old.name,
            new.name,
            switch_ms,
            retried,
        )
        self._on_change()
        task = asyncio.get_running_loop().create_task(self._retire(old))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retire(self, old: Upstream) -> None:
        """Leave OLD once its requests are answered (NBD_CMD_DISC); a request
        still unanswered after the I/O timeout is failed and sent again."""
        deadline = time.monotonic() + self.options.io_timeout
        while old.pending and old.lost is None and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if old.pending and old.lost is None:
            old.abort(f"requests unanswered for over {self.options.io_timeout:g} s after a move")
        await old.close()

    async def _probe_forever(self) -> None:
        """Probe the upstream with CACHE: a hung server is noticed while the
        device is idle, a move order when its server tells."""
        while not self._closed:
            waiting = self._unsettled is not None
            await asyncio.sleep(SETTLE_PROBE_S if waiting else PROBE_PERIOD_S)
            up = self._up
            if up is None or not up.export.transmission_flags & c.FLAG_SEND_CACHE:
                continue
            length = min(PROBE_LENGTH, up.size)
            if length <= 0:
                continue
            try:
                error, _ = await up.request(c.CMD_CACHE, 0, length, None, 0)
            except ConnectionLost:
                self._upstream_lost(up)
                continue
            if error == c.NBD_ESHUTDOWN:
                self._move_signalled(up)
                continue
            if self._moving_from is up:  # the order was cancelled: stay
                self._moving_from = None
            if self._unsettled is not None and up is self._up:
                self._settle()
