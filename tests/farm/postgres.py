"""A fresh, throw-away PostgreSQL database per use, or a skip if none is reachable.

Connects to postgresql+psycopg://root@127.0.0.1:5432/test, creates a database
with a random name (empty, or a copy of a template database), yields its URL,
and drops it afterwards (so tests never touch the shared `test` database's
tables). A template must have no open connections while it is copied.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
SERVER_URL = "postgresql+psycopg://root@127.0.0.1:5432"


def _admin_engine():
    return create_engine(
        ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3}
    )


def unreachable_reason() -> str | None:
    """Why PostgreSQL cannot be used for tests, or None if it can."""
    engine = _admin_engine()
    try:
        with engine.connect():
            return None
    except OperationalError as exc:
        return f"PostgreSQL not reachable at {ADMIN_URL}: {str(exc.orig).strip().splitlines()[0]}"
    finally:
        engine.dispose()


def postgres_reachable() -> bool:
    return unreachable_reason() is None


@contextlib.contextmanager
def fresh_postgres_url(template: str | None = None) -> Iterator[str]:
    """The URL of a new database, empty or a copy of the database at URL
    TEMPLATE; skips the test if PostgreSQL is unreachable."""
    engine = _admin_engine()
    name = f"vdfarm_test_{uuid.uuid4().hex[:12]}"
    create = f'CREATE DATABASE "{name}"'
    if template is not None:
        create += f' TEMPLATE "{make_url(template).database}"'
    try:
        with engine.connect() as conn:
            conn.execute(text(create))
    except OperationalError as exc:
        engine.dispose()
        if template is not None:
            raise  # reachable before (the template exists): a real failure
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL}: {str(exc).splitlines()[0]}")
    try:
        yield f"{SERVER_URL}/{name}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
