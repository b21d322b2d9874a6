"""Alembic environment of the farm database.

Rules: run programmatically by `vdfarm.farm.db` (which passes a live
connection in `config.attributes["connection"]`) or by the `alembic` command
with `-c vdfarm/farm/alembic.ini` (URL from VDFARM_DB or the ini file).
Never configures logging (it would reset the application's). SQLite gets
batch mode so later ALTERs work there too.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from vdfarm.farm.db import make_engine
from vdfarm.farm.models import Base

target_metadata = Base.metadata


def _configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    url = os.environ.get("VDFARM_DB") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: set VDFARM_DB or sqlalchemy.url")
    return url


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    engine = make_engine(_url())
    try:
        with engine.begin() as connection:
            _configure_and_run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
