"""Farm changes told over PostgreSQL LISTEN/NOTIFY: a committed change
reaches a listener, a rolled-back one does not; SQLite has no listener
and signalling there does nothing."""

from __future__ import annotations

import threading
import time

from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from tests.farm.postgres import fresh_postgres_url
from vdfarm.farm.changes import listener_for, signal_change

WAIT_S = 30


def listening(url: str) -> tuple[threading.Event, object]:
    heard = threading.Event()
    listener = listener_for(url, heard.set)
    assert listener is not None
    listener.start()
    return heard, listener


def wait_listening(engine, heard: threading.Event) -> None:
    """Signal until the listener hears one (it connects in the background)."""
    deadline = time.monotonic() + WAIT_S
    while not heard.wait(0.2):
        assert time.monotonic() < deadline, "the listener never heard a change"
        with Session(engine) as session, session.begin():
            signal_change(session)
    heard.clear()


def test_a_committed_change_is_heard_and_a_rolled_back_one_is_not():
    with fresh_postgres_url() as url:
        engine = create_engine(url)
        heard, listener = listening(url)
        try:
            wait_listening(engine, heard)
            with Session(engine) as session:
                signal_change(session)
                session.rollback()
            assert not heard.wait(1.5)
            with Session(engine) as session, session.begin():
                signal_change(session)
                signal_change(session)
            assert heard.wait(WAIT_S)
        finally:
            listener.stop()
            engine.dispose()


def test_sqlite_has_no_listener_and_signals_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    assert listener_for(url, lambda: None) is None
    engine = create_engine(url)
    with Session(engine) as session, session.begin():
        signal_change(session)  # no error, nothing to tell
    engine.dispose()
