"""`vdfarm db upgrade`: apply the Alembic migrations to the farm database.

Rules:
- The database is the one of --db, else the URL the data directory
  remembers (server.json, written by `init`), else the data directory's
  SQLite file; with neither --db nor an initialised data directory it
  refuses (it would make a new, empty database where none was meant).
- Prints the revision before and after; running it twice changes nothing.
  Every server of a farm shares the database, so one upgrade serves all.
- It also closes an initialised data directory (and an SQLite database) to
  other users, as `init` does (`identity.make_private`): a data directory
  made by an older vdfarm is tightened by either.
"""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from vdfarm.cli.common import emit, json_option, refuse_remote, state
from vdfarm.farm import db as farm_db
from vdfarm.service.context import DB_FILE, not_initialised_message
from vdfarm.service.deps import first_line
from vdfarm.service.errors import Invalid, NotInitialised, Unavailable
from vdfarm.service.identity import make_private, read_identity


def database_url(data_dir: str, db_url: str | None) -> str:
    """The URL `db upgrade` works on (see the rules).

    Raises Invalid (bad URL, damaged server.json), NotInitialised.
    """
    if db_url is None:
        identity = read_identity(Path(data_dir).absolute())
        if identity is None:
            raise NotInitialised(not_initialised_message(data_dir) + ", or give --db URL")
        db_url = identity.db_url or farm_db.sqlite_url(Path(data_dir).absolute() / DB_FILE)
    try:
        return farm_db.check_url(db_url)
    except farm_db.BadDatabaseURL as exc:
        raise Invalid(str(exc)) from exc


def revision_of(url: str) -> str | None:
    """The revision of the database at URL. Raises Invalid, Unavailable."""
    try:
        engine = farm_db.make_engine(url)
    except farm_db.BadDatabaseURL as exc:
        raise Invalid(str(exc)) from exc
    try:
        return farm_db.current_revision(engine)
    except DBAPIError as exc:
        raise Unavailable(
            f"cannot reach the farm database {_shown(url)}: {first_line(exc.orig or exc)}"
        ) from exc
    finally:
        engine.dispose()


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


@click.group()
def db() -> None:
    """Maintain the farm database."""


@db.command("upgrade")
@json_option
def upgrade_cmd() -> None:
    """Apply the farm database's migrations (the --db database, or the data directory's)."""
    refuse_remote("db upgrade")
    current = state()
    url = database_url(current.data_dir, current.db_url)
    before = revision_of(url)
    try:
        farm_db.upgrade(url)
    except DBAPIError as exc:
        raise Unavailable(
            f"cannot migrate the farm database {_shown(url)}: {first_line(exc.orig or exc)}"
        ) from exc
    except OSError as exc:
        raise Invalid(f"cannot make the farm database private: {exc.strerror}") from exc
    data_dir = Path(current.data_dir).absolute()
    if read_identity(data_dir) is not None:
        make_private(data_dir)
    after = revision_of(url)
    result = {"database": _shown(url), "from": before, "to": after}
    emit(
        result,
        lambda: click.echo(
            f"farm database {_shown(url)} is at revision {after} (already up to date)"
            if before == after
            else f"upgraded farm database {_shown(url)} from revision {before or 'none'} to {after}"
        ),
    )
