"""Engines and schema migrations of the farm database.

Rules:
- One way to make an engine (`make_engine`) so SQLite gets the same settings
  everywhere: foreign keys on, WAL journal, a busy timeout (the stream server
  and the CLI share the file).
- The schema is only ever made by Alembic migrations (`upgrade`), run
  programmatically; never by `metadata.create_all`.
- `HEAD_REVISION` names the newest migration; a test checks it is the head.
- An SQLite file is private to its owner: `make_engine` creates a missing
  one 0600 (O_EXCL, never through a link) before SQLite opens it, so its
  -wal/-shm files (SQLite gives them the database's mode) are 0600 too;
  `upgrade` closes an existing one (and its side files) to 0600.
- SQLite migrates with foreign keys off (`PRAGMA foreign_keys=OFF` before
  the migration's transaction starts: SQLite's documented way to change a
  table others reference without their ON DELETE actions firing), and
  `PRAGMA foreign_key_check` must find nothing before the migration
  commits.
- Alembic is imported only when migrating (it is slow to import and every
  CLI command would pay for it).
- `postgresql://` means psycopg 3 (the driver vdfarm installs); connects
  time out and dead connections are found by keepalives
  (`POSTGRES_CONNECT_ARGS`), so an unanswering database host costs seconds,
  not a hung server.
- PostgreSQL keeps psycopg's defaults, measured on the login path: a pooled
  connection prepares a statement server-side from its 5th use
  (`prepare_threshold`; turning that off costs a login ~0.4 ms), and
  `pool_pre_ping` (one ~25 µs round trip per checkout) spares the first
  request after a database restart a failure.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine.interfaces import DBAPIConnection

HEAD_REVISION = "0015"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
SQLITE_BUSY_TIMEOUT_S = 30
SQLITE_FILE_MODE = 0o600
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
# A database host that stops answering (rather than refusing) must not hang
# a server's database thread: give up connecting after 5 s; find a dead peer
# of an idle connection within about 25 s (TCP keepalive) and of a busy one
# within 15 s (unacknowledged data: tcp_user_timeout); no statement runs
# longer than 30 s nor waits for a row lock longer than 10 s (migrations
# lift both). A URL's own query parameters (?connect_timeout=...) win.
POSTGRES_CONNECT_ARGS: dict[str, int | str] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 15000,
    "options": "-c statement_timeout=30000 -c lock_timeout=10000",
}


class BadDatabaseURL(ValueError):
    """A database URL that SQLAlchemy cannot parse or has no driver for."""


class BrokenForeignKeys(RuntimeError):
    """A migration left rows whose foreign keys point nowhere (SQLite)."""


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of an SQLite file at PATH (made absolute)."""
    return f"sqlite:///{Path(path).absolute()}"


def check_url(url: str) -> str:
    """URL as the farm uses it: a `postgresql://` URL without a driver gets
    the one vdfarm installs (psycopg 3). Raises BadDatabaseURL."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise BadDatabaseURL(f"bad database URL {url!r}") from exc
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise BadDatabaseURL(
            f"unsupported database {parsed.get_backend_name()!r} (use sqlite or postgresql)"
        )
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def sqlite_file(url: str) -> Path | None:
    """The file of an SQLite URL (None: not SQLite, or in memory)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def create_private_sqlite(path: Path) -> None:
    """Create an empty SQLite file at PATH, mode 0600, unless one exists (a
    file that cannot be made is left to SQLite's own error when it opens it)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        os.close(os.open(path, flags, SQLITE_FILE_MODE))
    except OSError:
        pass


def make_sqlite_private(url: str) -> None:
    """Set the SQLite file of URL and its side files (-wal, -shm, -journal) to
    0600 (regular files only, never through a link); no-op for PostgreSQL.

    Raises OSError (a mode that cannot be set).
    """
    path = sqlite_file(url)
    if path is None:
        return
    for name in (str(path), *(f"{path}{side}" for side in SQLITE_SIDE_FILES)):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # missing, or a link: not ours to change
        try:
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) != SQLITE_FILE_MODE:
                os.fchmod(fd, SQLITE_FILE_MODE)
        finally:
            os.close(fd)


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for URL with the farm's settings.

    Raises BadDatabaseURL (unparsable URL, unknown backend, missing driver).
    """
    url = check_url(url)
    is_sqlite = make_url(url).get_backend_name() == "sqlite"
    kwargs: dict[str, dict[str, int | str]]
    if is_sqlite:
        kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
        database = sqlite_file(url)
        if database is not None:
            create_private_sqlite(database)
    else:
        given = make_url(url).query
        kwargs = {
            "connect_args": {k: v for k, v in POSTGRES_CONNECT_ARGS.items() if k not in given}
        }
    try:
        engine = create_engine(url, pool_pre_ping=not is_sqlite, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise BadDatabaseURL(f"cannot use database URL {url!r}: {exc}") from exc
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_on_connect)
    return engine


def alembic_config() -> Config:
    """An Alembic config pointing at the farm migrations (no ini file needed)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _run(url: str, action: Callable[[Config, str], None], revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            sqlite = connection.dialect.name == "sqlite"
            if sqlite:  # no transaction is open yet (pysqlite begins at the first write)
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            else:  # a migration may take long
                connection.exec_driver_sql("SET statement_timeout = 0")
                connection.exec_driver_sql("SET lock_timeout = 0")
            config = alembic_config()
            config.attributes["connection"] = connection
            action(config, revision)
            if sqlite and (broken := connection.exec_driver_sql("PRAGMA foreign_key_check").all()):
                raise BrokenForeignKeys(
                    f"the migration left {len(broken)} row(s) whose foreign keys point "
                    f"nowhere (first: {tuple(broken[0])})"
                )
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at URL up to REVISION; an SQLite file (and its
    side files) is left 0600.

    Raises BadDatabaseURL, sqlalchemy.exc.OperationalError (unreachable DB),
    OSError (the SQLite file's mode cannot be set), BrokenForeignKeys.
    """
    from alembic import command

    _run(url, command.upgrade, revision)
    make_sqlite_private(url)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at URL down to REVISION.

    Raises BadDatabaseURL, sqlalchemy.exc.OperationalError (unreachable DB),
    BrokenForeignKeys.
    """
    from alembic import command

    _run(url, command.downgrade, revision)


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at, or None if never migrated.

    Raises sqlalchemy.exc.OperationalError (unreachable DB).
    """
    with engine.connect() as connection:
        if not inspect(connection).has_table("alembic_version"):
            return None
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
