"""A change of the farm, told to every server at once (PostgreSQL
LISTEN/NOTIFY), so work that polls the database each second starts at once.

Rules:
- `signal_change(session)` adds a NOTIFY on CHANNEL to the session's
  transaction: PostgreSQL delivers it at commit, never after a rollback,
  and once per transaction however often it is called. On SQLite (one
  server, nobody to tell) it does nothing.
- `ChangeListener` LISTENs on a connection of its own (psycopg, autocommit,
  the farm's connect timeouts) in a daemon thread and calls `on_change()`
  for each notification. A lost connection is opened again after RETRY_S.
  A notification is a hint: whoever listens still polls on its own
  schedule, so a missed one costs a second, never a change.
- `listener_for(url, on_change)` makes one for a PostgreSQL URL (None for
  SQLite).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from vdfarm.farm.db import POSTGRES_CONNECT_ARGS

CHANNEL = "vdfarm_farm_changed"
RETRY_S = 5.0
POLL_S = 1.0

log = logging.getLogger("vdfarm.farm")


def signal_change(session: Session) -> None:
    """Tell the farm's listeners, when SESSION commits, that the farm changed."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, "")))


class ChangeListener:
    """Calls ON_CHANGE (from its own thread) for each change of the farm
    whose database is at the PostgreSQL URL."""

    def __init__(self, url: str, on_change: Callable[[], None], retry_s: float = RETRY_S) -> None:
        self._dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._on_change = on_change
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="farm-changes", daemon=True)

    def start(self) -> ChangeListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening (within POLL_S). Raises nothing."""
        self._stop.set()

    def _run(self) -> None:
        import psycopg  # only a PostgreSQL farm listens

        failing = False
        while not self._stop.is_set():
            try:
                connect_args: dict[str, Any] = dict(POSTGRES_CONNECT_ARGS)
                with psycopg.connect(self._dsn, autocommit=True, **connect_args) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if failing:
                        log.info("farm changes: listening again")
                    failing = False
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=POLL_S):
                            self._on_change()
            except (psycopg.Error, OSError) as exc:
                if not failing:
                    log.warning("farm changes: not listening (tried again): %s", exc)
                failing = True
                self._stop.wait(self._retry_s)


def listener_for(url: str, on_change: Callable[[], None]) -> ChangeListener | None:
    """A ChangeListener for URL if it is PostgreSQL's, else None."""
    if make_url(url).get_backend_name() != "postgresql":
        return None
    return ChangeListener(url, on_change)
