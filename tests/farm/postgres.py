"""A fresh, throw-away PostgreSQL database per use, or a skip if none is reachable.

Connects to postgresql+psycopg://root@127.0.0.1:5432/test, creates a database
with a random name, yields its URL, and drops it afterwards (so tests never
touch the shared `test` database's tables).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
SERVER_URL = "postgresql+psycopg://root@127.0.0.1:5432"


def _admin_engine():
    return create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT",
                         connect_args={"connect_timeout": 3})


def postgres_reachable() -> bool:
    engine = _admin_engine()
    try:
        with engine.connect():
            return True
    except OperationalError:
        return False
    finally:
        engine.dispose()


@contextlib.contextmanager
def fresh_postgres_url() -> Iterator[str]:
    """The URL of a new empty database; skips the test if PostgreSQL is unreachable."""
    engine = _admin_engine()
    name = f"vdfarm_test_{uuid.uuid4().hex[:12]}"
    try:
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        engine.dispose()
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL}: {str(exc).splitlines()[0]}")
    try:
        yield f"{SERVER_URL}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
